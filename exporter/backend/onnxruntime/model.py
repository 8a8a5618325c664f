"""A Python-based Triton backend named ``onnxruntime``.

The pip-installed Triton server has no native ONNX Runtime backend; placed at
``<backend-directory>/onnxruntime/model.py`` this serves the same model repository (and the
same unchanged ``config.pbtxt``) that the NGC image serves with its native backend.
It runs inside Triton's Python stub, not in the freshrank process.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _as_numpy(tensor, name):
    if tensor is None:
        raise ValueError(f"missing input {name!r}")
    return tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("FRESHRANK_ORT_THREADS", "1"))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {}
                for name in self.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    array = _as_numpy(tensor, name)
                    if array.dtype == np.object_:
                        array = np.array(
                            [
                                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                for v in array.ravel()
                            ],
                            dtype=object,
                        ).reshape(array.shape)
                    feed[name] = array
                results = self.session.run(self.outputs, feed)
                out = [
                    pb_utils.Tensor(n, r.astype(np.float32))
                    for n, r in zip(self.outputs, results, strict=True)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=out))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.session = None
