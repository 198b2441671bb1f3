-- Masks one batch of raw source rows (the Arrow table registered as `source`) into the raw-lake
-- shape. Nothing identifying survives except the keyed pseudonym; the birthday is reduced to the
-- age at the run date, which is all the analytical layer needs.
-- $ipad / $opad: the HMAC key XOR-ed with the RFC 2104 pads, so person_key equals
-- hmac.new(key, msg, sha256).hexdigest() computed in bulk.
with typed as (
    select
        *,
        try_cast(birthday as date) as birth_date,
        -- unit separator between parts so ("ab", "c") and ("a", "bc") never collide
        coalesce(lower(trim(email)), '') || chr(31) || coalesce(firstname, '') || chr(31)
            || coalesce(lastname, '') || chr(31) || coalesce(birthday, '') as identity
    from source
)
select
    sha256($opad || unhex(sha256($ipad || encode(identity)))) as person_key,
    $run_date::date as run_date,
    page,
    '****' as firstname,
    '****' as lastname,
    case
        when email is null then null
        when contains(email, '@') then '****@' || regexp_extract(email, '@([^@]*)$', 1)
        else '****'
    end as email,
    '****' as phone,
    -- whole years at the run date; a birthday not yet reached this year does not count yet
    -- (born 29 Feb: the birthday counts from 1 Mar in non-leap years)
    (date_diff('year', birth_date, $run_date::date)
        - (strftime(birth_date, '%m%d') > strftime($run_date::date, '%m%d'))::int)::smallint as age,
    gender,
    '****' as street,
    '****' as street_name,
    '****' as building_number,
    '****' as city,
    '****' as zipcode,
    country,
    country_code,
    '****' as latitude,
    '****' as longitude,
    '****' as website,
    '****' as image
from typed
