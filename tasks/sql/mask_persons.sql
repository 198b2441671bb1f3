-- The computed columns of one masked batch, in input order (tasks.ingest.mask adds the constant and
-- pass-through columns in Arrow, where they cost nothing). Source: the Arrow table registered as
-- `source`, with `identity` prepared by tasks.ingest.mask (null where only DuckDB's own lower/trim give
-- the exact identity). Nothing identifying survives except the keyed pseudonym; the birthday is
-- reduced to the age at the run date, which is all the analytical layer needs.
-- $ipad / $opad: the HMAC key XOR-ed with the RFC 2104 pads, so person_key equals
-- hmac.new(key, msg, sha256).hexdigest() computed in bulk.
with typed as (
    select
        email,
        try_cast(birthday as date) as birth_date,
        -- unit separator between parts so ("ab", "c") and ("a", "bc") never collide; concat reads
        -- a null part as ''
        coalesce(
            identity,
            concat(lower(trim(email)), chr(31), firstname, chr(31), lastname, chr(31), birthday)
        ) as identity
    from source
)
select
    sha256($opad || unhex(sha256($ipad || encode(identity)))) as person_key,
    case
        when email is null then null
        -- email_domain: the macro of tasks/common/emails.py (everything after the last "@")
        when contains(email, '@') then '****@' || email_domain(email)
        else '****'
    end as email,
    -- whole years at the run date; a birthday not yet reached this year does not count yet
    -- (born 29 Feb: the birthday counts from 1 Mar in non-leap years). Year difference and
    -- month * 100 + day comparisons: the same result as date_diff and strftime('%m%d'), cheaper.
    ($run_year - year(birth_date)
        - (month(birth_date) * 100 + day(birth_date) > $run_month_day)::int)::smallint as age
from typed
