"""A Python-based Triton backend named ``onnxruntime``.

The pip-installed Triton server has no native ONNX Runtime backend; placed at
``<backend-directory>/onnxruntime/model.py`` this serves the same model repository (and the
same ``config.pbtxt``) that the NGC image serves with its native backend. It runs inside
Triton's Python stub, not in the freshrank process.

Unlike the native backend it applies deltas (``<model>/deltas/<seq>.npz``, see
``exporter/delta.py``) in place as they appear, without a reload (``live.py``): a version
starts from its snapshot plus every delta after the one it was cut at, then follows the log.
A config parameter ``delta_limit`` stops it at that delta (``snapshot``: none; what a version
loaded by number, pinned or rolled back to, gets); the gate's hold (``deltas/hold.json``) takes
it back to an earlier delta without a reload.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from live import DeltaFollower, LiveModel  # (the backend directory, not a package)


def _as_numpy(tensor, name):
    if tensor is None:
        raise ValueError(f"missing input {name!r}")
    return tensor.as_numpy()


def _strings(array):
    if array.dtype != np.object_:
        return array
    return np.array(
        [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()],
        dtype=object,
    ).reshape(array.shape)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        threads = int(os.environ.get("FRESHRANK_ORT_THREADS", "1"))
        version = int(args["model_version"])
        model = LiveModel(path, threads=threads, version=version)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        # "snapshot": the version as it was cut (pinned, rolled back to, held); a number: up to it.
        limit = config.get("parameters", {}).get("delta_limit", {}).get("string_value") or None
        self.follower = DeltaFollower(
            model,
            os.path.join(args["model_repository"], "deltas"),
            limit=model.seq if limit == "snapshot" else (int(limit) if limit else None),
            log=lambda message: pb_utils.Logger.log_warn(message),
            reload=lambda: LiveModel(path, threads=threads, version=version),
        )
        self.follower.catch_up()  # the first answer already has every delta there is
        self.follower.start()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {}
                for name in self.inputs:
                    feed[name] = _strings(_as_numpy(pb_utils.get_input_tensor_by_name(request, name), name))
                scores, state = self.follower.model.run(feed)
                values = {"score": scores.astype(np.float32), "model_state": state}
                out = [pb_utils.Tensor(n, values[n]) for n in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=out))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.follower.stop()
