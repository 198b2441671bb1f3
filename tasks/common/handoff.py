"""Task results whose rows are handed over once, so the futures Prefect keeps do not pin them."""

from __future__ import annotations

import pyarrow as pa


class HandsOverTable:
    """Mixin for a task result with a `table` the next step takes exactly once.

    Prefect keeps every task's future, and with it the result, until the flow run ends; letting
    go of the rows when the next step takes them keeps a million of them (raw ones included)
    from staying in memory that long.
    """

    table: pa.Table | None

    def take_table(self) -> pa.Table:
        """The rows, handed over once: afterwards this result no longer holds them."""
        table, self.table = self.table, None
        if table is None:
            raise RuntimeError(f"this {type(self).__name__}'s rows were already handed over")
        return table
