"""Per organ, the decision level `calibrate` chose on the validation cases and the mean
validation Dice there and at the fixed level (0 for SDM heads, 0.5 for the Dice head), for
each calibrated model given (runs/<run>/calibrate[-small]/<variant>_<seed>/), as a
Markdown table.

    python levels.py NAME=MODEL_DIR [NAME=MODEL_DIR ...] > levels.md
"""

import json
import sys
from pathlib import Path


def main(args: list[str]) -> None:
    print("| model | mode | organ | level | val Dice at it | at the fixed level | cases |")
    print("|---|---|---|---|---|---|---|")
    for arg in args:
        name, _, folder = arg.rpartition("=")
        model = json.loads((Path(folder) / "model.json").read_text())
        levels = model.get("levels") or []
        if len(levels) != len(model["organs"]):
            sys.exit(f"{folder}: model.json has no levels for its organs (not calibrated?)")
        for organ, lv in zip(model["organs"], levels):
            print(
                f"| {name or folder} | {model['mode']} | {organ} | {lv['level']:+.2f} "
                f"| {lv['dice']:.3f} | {lv['dice_fixed']:.3f} | {lv['cases']} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
