"""`python -m keras_dae.export.worker REQUEST.json`: one export under the TensorFlow backend.

Run by `export()` when the model lives on JAX or PyTorch: the model arrives as a preset
directory, the result is written as JSON to the request's `result` path.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(argv[0]).read_text())
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        print("error: the export worker runs with KERAS_BACKEND=tensorflow", file=sys.stderr)
        return 2
    import numpy as np

    from keras_dae import zoo
    from keras_dae.export.api import export

    calibration = request["calibration"]
    if calibration is not None and calibration.endswith(".npy"):
        calibration = np.load(calibration)
    result = export(zoo.load(request["model"]), request["path"], request["format"],
                    quantize=request["quantize"], calibration=calibration,
                    calibration_windows=request["calibration_windows"],
                    dft_mode=request["dft_mode"], window_seconds=request["window_seconds"],
                    batch_size=request["batch_size"],
                    check=False)  # the caller checks the artifact against its own model
    Path(request["result"]).write_text(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
