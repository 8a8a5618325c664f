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

Candidates are batch rows (``max_batch_size`` > 0): Triton's dynamic batcher hands
:meth:`TritonPythonModel.execute` every request queued meanwhile, and they are scored in one
run (one lookup pass, one onnxruntime call) and split again. A request that breaks the serving
contract (``live.request_error``) is answered ``INVALID_ARGUMENT`` alone; the others in the
same batch are served.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from live import DeltaFollower, LiveModel, request_error  # (the backend directory, not a package)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        threads = int(os.environ.get("FRESHRANK_ORT_THREADS", "1"))
        version = int(args["model_version"])
        model = LiveModel(path, threads=threads, version=version)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.max_rows = int(config.get("max_batch_size", 0)) or None
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

    def _columns(self, request):
        columns = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            columns[name] = None if tensor is None else tensor.as_numpy()
        return columns

    def execute(self, requests):
        responses = [None] * len(requests)
        good, feeds = [], []
        for k, request in enumerate(requests):
            columns = self._columns(request)
            error = request_error(columns, self.max_rows)
            if error is not None:
                responses[k] = _refused(error, pb_utils.TritonError.INVALID_ARG)
            else:
                good.append(k)
                feeds.append({name: values.reshape(-1) for name, values in columns.items()})
        if not feeds:
            return responses
        try:
            feed = (
                feeds[0]
                if len(feeds) == 1
                else {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            )
            scores, state = self.follower.model.run(feed)
            scores = scores.astype(np.float32, copy=False)
        except Exception as exc:  # noqa: BLE001 - answered, never a crashed stub
            for k in good:
                responses[k] = _refused(f"scoring failed: {exc}", pb_utils.TritonError.INTERNAL)
            return responses
        start = 0
        for k, f in zip(good, feeds, strict=True):
            n = len(f["price"])
            # Batch rows (max_batch_size > 0): the state on every row; a config without: once.
            rows_state = np.tile(state, (n, 1)) if self.max_rows else state
            mine = scores[start : start + n]
            values = {"score": mine.reshape(n, 1) if self.max_rows else mine, "model_state": rows_state}
            start += n
            out = [pb_utils.Tensor(name, values[name]) for name in self.outputs]
            responses[k] = pb_utils.InferenceResponse(output_tensors=out)
        return responses

    def finalize(self):
        self.follower.stop()


def _refused(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
