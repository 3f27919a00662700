"""``python -m fedcare.flower_compat superlink|superexec|flwr ARGS``: Flower's commands the
fedcare way (SuperLink with its ordering fixes, SuperExec and ``flwr`` without TensorFlow)."""

import sys
from collections.abc import Sequence

from fedcare.flower_compat import run_flwr_cli, run_superexec, run_superlink

USAGE = ("usage: python -m fedcare.flower_compat superlink [flower-superlink arguments]\n"
         "       python -m fedcare.flower_compat flwr [flwr arguments, e.g. run . deployment]")
EXIT_USAGE = 2


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["superlink"]:
        run_superlink(argv[1:])
        return 0
    if argv[:1] == ["superexec"]:
        run_superexec(argv[1:])
        return 0
    if argv[:1] == ["flwr"]:
        return run_flwr_cli(argv[1:])
    sys.stderr.write(USAGE + "\n")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
