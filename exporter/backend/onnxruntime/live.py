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
from itertools import repeat

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
INPUT_NODE_PREFIX = "input_"  # the graph's Squeeze of each [N, 1] input (exporter/onnx_export.py)


STRING_INPUTS = ("user_id", "query", "item_id", "category", "brand")
PRICE_INPUT = "price"


def request_error(columns, max_rows=None):
    """Why a request breaks the serving contract, naming the input; None when it holds.

    The contract (README, "Serving"): the six inputs, one row per candidate in each (the same
    number of rows in all, at least one, at most ``max_rows``), ids as strings, ``price`` finite.
    """
    lengths = {}
    for name in (*STRING_INPUTS, PRICE_INPUT):
        values = columns.get(name)
        if values is None:
            return f"missing input {name!r}"
        if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
            return f"input {name!r} has shape {list(values.shape)}: expected one value per candidate row"
        lengths[name] = values.size
    first = lengths["item_id"]
    unequal = {name: n for name, n in lengths.items() if n != first}
    if unequal:
        listed = ", ".join(f"{name} {n}" for name, n in sorted(unequal.items()))
        return f"inputs differ in length: item_id has {first} rows, {listed}"
    if first == 0:
        return "input 'item_id' is empty: a request ranks at least one candidate"
    if max_rows is not None and first > max_rows:
        return f"input 'item_id' has {first} rows, more than the {max_rows} a request may hold"
    price = columns[PRICE_INPUT]
    if price.dtype.kind != "f":
        return f"input 'price' is {price.dtype}: expected FP32"
    finite = np.isfinite(price)
    if not finite.all():
        row = int(np.flatnonzero(~finite.ravel())[0])
        return f"input 'price' holds {float(price.ravel()[row])} at row {row}: prices must be finite"
    return None


class DeltaError(ValueError):
    """A delta that cannot apply to this state (out of order, wrong shape, not finite)."""


class _Encoder:
    """A ``LabelEncoder`` as a dictionary keyed by the ids' UTF-8 bytes, as Triton hands them
    over: no decoding, and one C-level ``dict.get`` a value (100 ids in ~7 us; decoding to
    ``str`` and looking those up was ~3/4 of the backend's time a request)."""

    def __init__(self, node):
        attrs = {a.name: a for a in node.attribute}
        self.rows = dict(zip(attrs["keys_strings"].strings, attrs["values_int64s"].ints, strict=True))
        self.default = int(attrs["default_int64"].i) if "default_int64" in attrs else -1
        self.input = node.input[0]
        self.output = node.output[0]

    def set(self, key, row):
        """``key`` (``str``) now maps to ``row``; to nothing when ``row`` is the default."""
        key = key.encode("utf-8")
        if row == self.default:
            self.rows.pop(key, None)
        else:
            self.rows[key] = row

    def get(self, key):
        return self.rows.get(key.encode("utf-8"))

    def lookup(self, values):
        """Rows for an array of ids: ``bytes`` (from Triton) or ``str`` (from onnxruntime)."""
        flat = values.ravel()
        if len(flat) and not isinstance(flat[0], bytes):
            flat = [str(v).encode("utf-8") for v in flat]
        rows = np.fromiter(map(self.rows.get, flat, repeat(self.default)), dtype=np.int64, count=len(flat))
        return rows.reshape(values.shape)


def _distinct(values):
    """The distinct values of a 1-D array and, when there are fewer than rows, the index of each
    row's value among them (None: every row its own, in order)."""
    if len(values) < 2:
        return values, None
    if (values == values[0]).all():
        return values[:1], np.zeros(len(values), dtype=np.int64)
    distinct, rows = np.unique(values, return_inverse=True)
    if len(distinct) == len(values):
        return values, None
    return distinct, rows.reshape(-1)


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
        # Inputs are [N, 1] and squeezed to [N] first (graphs from before batch rows take [N]
        # as they are): this object feeds the [N] forms itself.
        squeezed = {
            n.input[0]: n.output[0]
            for n in kept
            if n.op_type == "Squeeze" and n.name.startswith(INPUT_NODE_PREFIX)
        }
        kept = [n for n in kept if not (n.op_type == "Squeeze" and n.name.startswith(INPUT_NODE_PREFIX))]
        self.row_names = {i.name: squeezed.get(i.name, i.name) for i in graph.input}
        query_rows = self.row_names["query"]
        split = [n for n in kept if n.output and n.output[0] in ("q_lower", SPLIT_OUTPUT)]
        core = [n for n in kept if n not in split]
        inputs = [
            helper.make_tensor_value_info(self.row_names[i.name], i.type.tensor_type.elem_type, ["N"])
            for i in graph.input
            if i.name != "query"
        ]
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
        # The state is this object's (it moves with deltas): the graph's state nodes go.
        core = [n for n in core if not (n.name.startswith(STATE_OUTPUT) or STATE_OUTPUT in n.output)]
        opsets = list(proto.opset_import)
        core_graph = helper.make_graph(core, "freshrank_live", inputs, outputs, initializer=rest)
        core_model = helper.make_model(core_graph, opset_imports=opsets)
        core_model.ir_version = proto.ir_version
        split_graph = helper.make_graph(
            split,
            "freshrank_split",
            [helper.make_tensor_value_info(query_rows, onnx.TensorProto.STRING, ["N"])],
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
        """``score`` and ``model_state`` for one request: raw string arrays (``bytes`` as Triton
        hands them, or ``str``) and ``price`` in."""
        feed = {self.row_names.get(name, name): np.asarray(v).reshape(-1) for name, v in feed.items()}
        query = feed[self.row_names["query"]]
        # A search request has one query for all its rows, and a batch of merged requests one
        # per request: each distinct query is split and looked up once, then spread to its rows.
        distinct, rows = _distinct(query)
        with self.lock:
            tokens = self._split(distinct)
            inputs = {}
            for enc in self.encoders.values():
                if enc.input == SPLIT_OUTPUT:
                    inputs[enc.output] = enc.lookup(tokens)
                else:
                    inputs[enc.output] = enc.lookup(feed[enc.input])
            inputs[SPLIT_OUTPUT] = tokens
            if rows is not None:
                for name in [
                    SPLIT_OUTPUT,
                    *(e.output for e in self.encoders.values() if e.input == SPLIT_OUTPUT),
                ]:
                    inputs[name] = inputs[name][rows]
            for name in self.core_inputs:
                if name not in inputs:
                    inputs[name] = self.tables[name] if name in self.tables else feed[name]
            (scores,) = self.core.run(["score"], inputs)
            return scores.reshape(-1), self.state

    def _split(self, query):
        """The graph's own lower-casing and split of the query column."""
        if query.dtype == np.object_ and len(query) and isinstance(query[0], bytes):
            query = np.array([q.decode("utf-8", "replace") for q in query], dtype=object)
        (tokens,) = self.split.run([SPLIT_OUTPUT], {self.row_names["query"]: query})
        return tokens

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
                    enc.set(key, row)
        ids = arrays.get("titles.ids")
        if ids is not None and "text_titles" in self.encoders and "title_vectors" in self.tables:
            self._titles(ids.tolist(), arrays["titles.vectors"])

    def _titles(self, ids, vectors):
        enc = self.encoders["text_titles"]
        table = self.tables["title_vectors"]
        for item, vector in zip(ids, vectors, strict=True):
            row = enc.get(item)
            if row is None:
                row = self._title_count
                self._title_count += 1
                if row >= len(table):  # grow by doubling: the next run feeds the new array
                    grown = np.zeros((max(2 * len(table), row + 1), table.shape[1]), dtype=table.dtype)
                    grown[: len(table)] = table
                    table = self.tables["title_vectors"] = grown
                enc.set(item, row)
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
