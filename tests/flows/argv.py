"""A target that reads its arguments as a script does: at import and in a step."""

from __future__ import annotations

import sys
from typing import Any

from flowpool import Context, Flow

AT_IMPORT = list(sys.argv)


def show(ctx: Context) -> dict[str, Any]:
    return {"import": AT_IMPORT, "step": list(sys.argv)}


flow = Flow("argv").step("show", show)
