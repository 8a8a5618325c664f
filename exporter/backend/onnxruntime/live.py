"""A version's graph with its tables held live, so that deltas apply in place between requests.

Loaded from a version's ``model.onnx`` (as the exporter wrote it) inside Triton's Python stub:
numpy, onnx and onnxruntime only. The graph is cut in two at load:

- the id lookups (``LabelEncoder`` nodes ``vocab_user``, ``vocab_item``, ``vocab_category``,
  ``vocab_brand``, ``vocab_token`` and ``text_titles``) leave the graph and become Python
  dictionaries, so a delta can give a new id a row; the query is still lower-cased and split
  by the graph's own ops (a first, small session), so tokens match the snapshot's exactly;
- the tables and dense tensors (``emb_*``, ``item_bias``, the MLP, the text projection, the
  title vectors) leave the graph's initializers and become inputs fed from numpy arrays that
  this object owns: onnxruntime reads them without a copy (measured: +0.6 us a run for a
  2M x 16 table), and a delta writes their rows in place.

:meth:`LiveModel.apply` and :meth:`LiveModel.run` take the same lock, so a request is scored
by one whole state, never half a delta; the state (``version``, last delta applied) comes out
as ``model_state``. The delta format is documented in ``exporter/delta.py``.
"""

import io
import json
import os
import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ENCODERS = ("vocab_user", "vocab_item", "vocab_category", "vocab_brand", "vocab_token", "text_titles")
LIVE_TABLES = ("emb_user", "emb_token", "emb_item", "emb_category", "emb_brand", "item_bias", "title_vectors")
DENSE = ("w1", "b1", "w2", "b2", "text_proj_t", "text_weight")
SPLIT_OUTPUT = "q_tokens"
STATE_OUTPUT = "model_state"
DELTA_SEQ_PROP = "freshrank.delta_seq"
VERSION_PROP = "freshrank.version"
HOLD_FILE = "hold.json"


class DeltaError(ValueError):
    """A delta that cannot apply to this state (out of order, wrong shape, not finite)."""


class _Encoder:
    def __init__(self, node):
        attrs = {a.name: a for a in node.attribute}
        keys = [k.decode("utf-8") for k in attrs["keys_strings"].strings]
        self.rows = dict(zip(keys, attrs["values_int64s"].ints, strict=True))
        self.default = int(attrs["default_int64"].i) if "default_int64" in attrs else -1
        self.input = node.input[0]
        self.output = node.output[0]

    def lookup(self, values):
        rows, default = self.rows, self.default
        flat = [rows.get(v, default) for v in values.ravel()]
        return np.array(flat, dtype=np.int64).reshape(values.shape)


class LiveModel:
    """One version's graph, its tables as live arrays, and the deltas applied to them."""

    def __init__(self, path, threads=1, version=None):
        proto = onnx.load(path)  # with its external data
        props = {p.key: p.value for p in proto.metadata_props}
        self.version = int(version if version is not None else props.get(VERSION_PROP, 0))
        self.seq = int(props.get(DELTA_SEQ_PROP, 0))
        self.base_seq = self.seq  # the version's own cut: no hold goes below it
        graph = proto.graph
        self.encoders = {}
        kept = []
        for node in graph.node:
            if node.op_type == "LabelEncoder" and node.name in ENCODERS:
                self.encoders[node.name] = _Encoder(node)
            else:
                kept.append(node)
        self.tables = {}
        rest = []
        for init in graph.initializer:
            if init.name in LIVE_TABLES or init.name in DENSE:
                self.tables[init.name] = np.array(numpy_helper.to_array(init))  # owned, writable
            else:
                rest.append(init)
        split = [n for n in kept if n.output and n.output[0] in ("q_lower", SPLIT_OUTPUT)]
        core = [n for n in kept if n not in split]
        inputs = [i for i in graph.input if i.name != "query"]
        inputs.append(helper.make_tensor_value_info(SPLIT_OUTPUT, onnx.TensorProto.STRING, ["N", "T"]))
        for enc in self.encoders.values():
            rank = ["N", "T"] if enc.input == SPLIT_OUTPUT else ["N"]
            inputs.append(helper.make_tensor_value_info(enc.output, onnx.TensorProto.INT64, rank))
        for name, array in self.tables.items():
            inputs.append(
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(array.dtype), [None] * array.ndim
                )
            )
        outputs = [o for o in graph.output if o.name != STATE_OUTPUT]
        core = [n for n in core if STATE_OUTPUT not in n.output]
        opsets = list(proto.opset_import)
        core_graph = helper.make_graph(core, "freshrank_live", inputs, outputs, initializer=rest)
        core_model = helper.make_model(core_graph, opset_imports=opsets)
        core_model.ir_version = proto.ir_version
        split_graph = helper.make_graph(
            split,
            "freshrank_split",
            [i for i in graph.input if i.name == "query"],
            [helper.make_tensor_value_info(SPLIT_OUTPUT, onnx.TensorProto.STRING, ["N", "T"])],
        )
        split_model = helper.make_model(split_graph, opset_imports=opsets)
        split_model.ir_version = proto.ir_version
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.core = ort.InferenceSession(core_model.SerializeToString(), opts, providers=providers)
        self.split = ort.InferenceSession(split_model.SerializeToString(), opts, providers=providers)
        self.core_inputs = {i.name for i in self.core.get_inputs()}
        self.lock = threading.Lock()
        self._title_count = (
            int(max(self.encoders["text_titles"].rows.values(), default=0)) + 1
            if ("text_titles" in self.encoders)
            else 0
        )

    @property
    def state(self):
        return np.array([self.version, self.seq], dtype=np.int64)

    def run(self, feed):
        """``score`` and ``model_state`` for one request: raw string arrays and ``price`` in."""
        with self.lock:
            (tokens,) = self.split.run([SPLIT_OUTPUT], {"query": feed["query"]})
            inputs = {SPLIT_OUTPUT: tokens}
            for enc in self.encoders.values():
                source = tokens if enc.input == SPLIT_OUTPUT else feed[enc.input]
                inputs[enc.output] = enc.lookup(source)
            for name in self.core_inputs:
                if name not in inputs:
                    inputs[name] = self.tables[name] if name in self.tables else feed[name]
            (scores,) = self.core.run(["score"], inputs)
            return scores, self.state

    def apply(self, data):
        """Apply one delta (the bytes of its ``.npz``); it must be the next in sequence."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
        seq = int(meta["seq"])
        if seq <= self.seq:
            return False  # already in this state (the snapshot, or applied): absolute values
        checked = self._check(arrays)
        with self.lock:
            self._apply(checked)
            self.seq = seq
        return True

    def _check(self, arrays):
        """Everything that can refuse a delta, before anything of it is applied."""
        for name, values in arrays.items():
            numeric = name.startswith(("values.", "dense.", "titles.vectors")) and values.size
            if numeric and not np.isfinite(values.astype(np.float32, copy=False)).all():
                raise DeltaError(f"non-finite values in {name}")
            if name.startswith("rows."):
                table = name[len("rows.") :]
                if table not in self.tables:
                    raise DeltaError(f"delta names table {table!r}, which this graph does not have")
                live = self.tables[table]
                vals = arrays.get(f"values.{table}")
                if vals is None or vals.shape != (len(values), *live.shape[1:]):
                    raise DeltaError(f"values of {table} do not match its rows")
                if len(values) and (values.min() < 0 or values.max() >= len(live)):
                    raise DeltaError(f"rows of {table} beyond its {len(live)} rows")
            if name.startswith("dense."):
                dense = name[len("dense.") :]
                if dense in self.tables and self.tables[dense].shape != values.shape:
                    raise DeltaError(f"{dense} is {values.shape}, this graph's {self.tables[dense].shape}")
        return arrays

    def _apply(self, arrays):
        for name, rows in arrays.items():
            if name.startswith("rows."):
                table = name[len("rows.") :]
                self.tables[table][rows] = arrays[f"values.{table}"]
            elif name.startswith("dense."):
                dense = name[len("dense.") :]
                if dense in self.tables:
                    self.tables[dense][...] = arrays[name]
            elif name.startswith("keys."):
                enc = self.encoders.get(name[len("keys.") :])
                if enc is None:
                    continue
                rows_of = arrays["keyrows." + name[len("keys.") :]]
                for key, row in zip(arrays[name].tolist(), rows_of.tolist(), strict=True):
                    if row == enc.default:
                        enc.rows.pop(key, None)
                    else:
                        enc.rows[key] = row
        ids = arrays.get("titles.ids")
        if ids is not None and "text_titles" in self.encoders and "title_vectors" in self.tables:
            self._titles(ids.tolist(), arrays["titles.vectors"])

    def _titles(self, ids, vectors):
        enc = self.encoders["text_titles"]
        table = self.tables["title_vectors"]
        for item, vector in zip(ids, vectors, strict=True):
            row = enc.rows.get(item)
            if row is None:
                row = self._title_count
                self._title_count += 1
                if row >= len(table):  # grow by doubling: the next run feeds the new array
                    grown = np.zeros((max(2 * len(table), row + 1), table.shape[1]), dtype=table.dtype)
                    grown[: len(table)] = table
                    table = self.tables["title_vectors"] = grown
                enc.rows[item] = row
            table[row] = vector


class DeltaFollower:
    """Applies the deltas of ``directory`` to ``model`` as they appear, in order, on a thread.

    ``limit``: apply none after this sequence number (a pinned or rolled-back snapshot). A hold
    (``hold.json`` in the directory, written by the updater's gate) naming this version lowers
    the limit while it is there; a state already past it is rebuilt by ``reload`` (a fresh
    :class:`LiveModel` from the version's files) plus the deltas up to it, then swapped in:
    requests go on with the old state meanwhile. :attr:`model` is the state to score with.
    """

    def __init__(self, model, directory, limit=None, interval_s=0.02, log=None, reload=None):
        self.model = model
        self.directory = directory
        self.limit = limit
        self.interval_s = interval_s
        self.log = log
        self.reload = reload
        self.failed = None
        self.rebuilt = 0
        self._hold_error = None
        self._stop = threading.Event()
        self._thread = None

    def _listed(self):
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-4]) for n in names if n.endswith(".npz") and n[:-4].isdigit())

    def _hold(self):
        """The hold's delta for this version, or None."""
        try:
            with open(os.path.join(self.directory, HOLD_FILE), "rb") as f:
                hold = json.loads(f.read())
            if int(hold["version"]) != self.model.version:
                return None
            return max(int(hold["upto"]), self.model.base_seq)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if self.log is not None and str(exc) != self._hold_error:
                self.log(f"freshrank: ignoring an unreadable {HOLD_FILE}: {exc}")
            self._hold_error = str(exc)
            return None

    def effective_limit(self):
        held = self._hold()
        if held is None:
            return self.limit
        return held if self.limit is None else min(self.limit, held)

    def catch_up(self):
        """Apply every delta there is now, in order; stop at a gap (one not written yet) or at
        a delta that fails (serving stays on the last good state, and says why). Past a hold's
        delta, go back to it first."""
        seqs = self._listed()
        # Read after listing: a hold written before a delta is in force by the time it is seen.
        limit = self.effective_limit()
        if limit is not None and self.model.seq > limit and self.reload is not None:
            try:
                fresh = self.reload()
            except Exception as exc:  # noqa: BLE001 - the thread must live on: retried next round
                if self.log is not None:
                    self.log(f"freshrank: could not rebuild version {self.model.version} for a hold: {exc}")
                return 0
            if self._apply(fresh, seqs, limit) is None:
                return 0
            self.model = fresh  # one reference: a request scores with the old state or the new
            self.rebuilt += 1
            if self.log is not None:
                self.log(f"freshrank: serving version {fresh.version} at delta {fresh.seq} (held)")
            return 0
        return self._apply(self.model, seqs, limit) or 0

    def _apply(self, model, seqs, limit):
        """Apply ``seqs`` after ``model.seq`` up to ``limit`` in order; None when one did not fit."""
        applied = 0
        for seq in seqs:
            if seq <= model.seq or (limit is not None and seq > limit):
                continue
            if seq != model.seq + 1:
                break  # not the next one: wait until it is written
            path = os.path.join(self.directory, f"{seq:012d}.npz")
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:  # a read that failed: try again on the next round
                if self.log is not None:
                    self.log(f"freshrank: delta {seq} not read yet: {exc}")
                return applied
            try:
                model.apply(data)
            except (ValueError, KeyError) as exc:
                # A delta that does not fit this state: stay on the last good one, and say so.
                self.failed = f"delta {seq}: {exc}"
                if self.log is not None:
                    self.log(f"freshrank: not applying {self.failed}")
                self._stop.set()
                return None
            applied += 1
        return applied

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="freshrank-deltas", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self.catch_up()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
