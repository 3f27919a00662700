"""``python -m fedcare.flower_compat superlink ARGS``: Flower's SuperLink with fedcare's fix."""

import sys

from fedcare.flower_compat import run_superlink

if sys.argv[1:2] != ["superlink"]:
    raise SystemExit("usage: python -m fedcare.flower_compat superlink [flower-superlink "
                     "arguments]")
run_superlink(sys.argv[2:])
