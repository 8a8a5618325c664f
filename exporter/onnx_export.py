"""Build an ONNX graph from the live model, with the vocabularies inside it.

Clients send raw string ids; ``ai.onnx.ml.LabelEncoder`` maps them to embedding rows with
the vocabulary that matches these weights, so a version's ids and weights cannot disagree.
The graph restates :meth:`rankcore.model.Ranker.forward` op for op; the parity check in
:mod:`exporter.check` compares the two on real samples before anything is published.

With the text tower the graph also carries the frozen word table (queries are encoded inside
it, on every request) and one title vector per catalogue item, keyed by ``item_id`` like the
embeddings: text and weights travel in the same version directory, so a rollback or a cold
start of Triton cannot pair one version's weights with another's titles.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rankcore.features import Vocabularies
from rankcore.model import FEATURES, Ranker
from rankcore.text import NORM_FLOOR, TextEncoder
from rankcore.vocab import OOV, PAD, RESERVED

# Serving contract: input names are the event field names.
STRING_INPUTS = {"user": "user_id", "item": "item_id", "category": "category", "brand": "brand"}
QUERY_INPUT = "query"
PRICE_INPUT = "price"
OUTPUT = "score"
STATE_OUTPUT = "model_state"
ROWS_SUFFIX = "_rows"  # inputs squeezed to [N] (and the score before it is unsqueezed)
INPUT_NODE_PREFIX = "input_"
MAX_PRICE = 1e9  # the items contract's bound
VERSION_PROP = "freshrank.version"
DELTA_SEQ_PROP = "freshrank.delta_seq"
INPUT_NAMES = ("user_id", "query", "item_id", "category", "brand", "price")
ONNX_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
OPSET = 20
ML_OPSET = 3


def dense_weights(model: Ranker) -> dict[str, np.ndarray]:
    """The graph's dense tensors by their initializer names (a few kB: every delta has them all)."""
    sd = model.state_dict()  # references: only the tensors named here are copied to the host

    def host(key: str) -> np.ndarray:
        return sd[key].detach().cpu().numpy()

    out = {
        "w1": host("mlp.0.weight"),
        "b1": host("mlp.0.bias"),
        "w2": host("mlp.2.weight"),
        "b2": host("mlp.2.bias"),
    }
    if "text_proj.weight" in sd:
        out["text_proj_t"] = np.ascontiguousarray(host("text_proj.weight").T)
        out["text_weight"] = host("text_weight")
    return out


def _weights(model: Ranker) -> dict[str, np.ndarray]:
    out = {f"emb_{f}": model.table(f).weight.detach().cpu().numpy() for f in FEATURES}
    out["item_bias"] = model.item_bias.weight.detach().cpu().numpy()
    out.update(dense_weights(model))
    return out


def _encoder(name: str, inp: str, out: str, default: int = OOV) -> onnx.NodeProto:
    # "" (and padding) is row 0, every unknown id row 1 (OOV). The keys themselves are filled in
    # by _fill_encoders once the model proto exists: see there for why.
    return helper.make_node(
        "LabelEncoder", [inp], [out], name=name, domain="ai.onnx.ml", default_int64=default
    )


def _text_nodes(
    text: TextEncoder, titles: Mapping[str, str], keys_by_node: dict[str, list[str]]
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Query and title vectors, and the tower's features ``t_features`` (cosine, P t, P q * P t).

    The query's words map to rows of the frozen word table (unknown words to the zero row 0), are
    summed and L2-normalised, as :class:`rankcore.text.TextEncoder` does; titles are looked up by
    ``item_id`` in a table of the catalogue's titles, encoded once at export (unknown: zero).
    """
    table = text.table
    ids = sorted(titles)
    title_vectors = np.zeros((len(ids) + 1, table.dim), dtype=np.float16)
    if ids:
        title_vectors[1:] = text.titles(titles[i] for i in ids).astype(np.float16)
    keys_by_node["text_words"] = list(table.words)
    keys_by_node["text_titles"] = ids
    nodes = [
        _encoder("text_words", "q_tokens", "qw_rows_all", default=0),
        helper.make_node("Slice", ["qw_rows_all", "zero_i", "max_tokens", "axis1"], ["qw_rows"]),
        helper.make_node("Gather", ["word_vectors", "qw_rows"], ["qw_half"], axis=0),
        helper.make_node("Cast", ["qw_half"], ["qw"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["qw", "axis1"], ["qt_sum"], keepdims=0),
        helper.make_node("ReduceL2", ["qt_sum", "axis1"], ["qt_norm0"], keepdims=1),
        helper.make_node("Max", ["qt_norm0", "norm_floor"], ["qt_norm"]),
        helper.make_node("Div", ["qt_sum", "qt_norm"], ["q_text"]),
        _encoder("text_titles", _rows("item_id"), "title_row", default=0),
        helper.make_node("Gather", ["title_vectors", "title_row"], ["t_half"], axis=0),
        helper.make_node("Cast", ["t_half"], ["t_text"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["q_text", "t_text"], ["qt_prod"]),
        helper.make_node("ReduceSum", ["qt_prod", "axis1"], ["qt_cos"], keepdims=1),
        helper.make_node("MatMul", ["q_text", "text_proj_t"], ["pq"]),
        helper.make_node("MatMul", ["t_text", "text_proj_t"], ["pt"]),
        helper.make_node("Mul", ["pq", "pt"], ["pq_pt"]),
    ]
    arrays = {
        "word_vectors": table.vectors,
        "title_vectors": title_vectors,
        "norm_floor": np.array(NORM_FLOOR, dtype=np.float32),
    }
    return nodes, arrays


def _fill_encoders(graph: onnx.GraphProto, keys_by_node: dict[str, list[str]]) -> None:
    """Write each encoder's ``keys_strings``/``values_int64s`` straight into the final graph.

    ``helper.make_attribute`` checks and converts every key in Python (~2.6 s per million keys),
    and ``make_graph``/``make_model`` copy every node again; here the keys are encoded once and
    land in the message that is saved.
    """
    for node in graph.node:
        keys = keys_by_node.get(node.name)
        if keys is None:
            continue
        strings = node.attribute.add(name="keys_strings", type=onnx.AttributeProto.STRINGS)
        strings.strings.append(b"")
        strings.strings.extend([k.encode() for k in keys])
        values = node.attribute.add(name="values_int64s", type=onnx.AttributeProto.INTS)
        values.ints.append(PAD)
        # Id vocabularies start at row 2 (0 padding, 1 OOV); the text tables at row 1 (0 zero).
        first = 1 if node.name.startswith("text_") else RESERVED
        values.ints.extend(range(first, first + len(keys)))


def _add_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """One weight tensor, added in place (``make_graph``/``make_model`` would copy it twice)."""
    array = np.ascontiguousarray(array)
    tensor = graph.initializer.add(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    tensor.dims.extend(array.shape)
    tensor.raw_data = array.tobytes()


def read_cut(path: Path) -> int:
    """The last delta a version's ``model.onnx`` includes (its metadata; the weights are not read)."""
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return int(props.get(DELTA_SEQ_PROP, 0))


def _rows(name: str) -> str:
    """The [N] form of the [N, 1] tensor ``name``."""
    return f"{name}{ROWS_SUFFIX}"


def build_onnx(
    model: Ranker,
    vocabs: Vocabularies,
    titles: Mapping[str, str] | None = None,
    version: int = 0,
    delta_seq: int = 0,
) -> onnx.ModelProto:
    """The serving graph: raw ids and price in, click probability ``score`` and the state that
    scored, ``model_state`` = [``version``, ``delta_seq``], out.

    ``titles`` (``item_id`` -> title, the catalogue's) feed the text tower when the model has
    one; an item not in it scores with a zero title vector. ``delta_seq`` is the last delta
    (:mod:`exporter.delta`) this state includes: serving that applies deltas applies the ones
    after it and reports the last it applied; one that does not reports this.
    """
    cfg = model.config
    w = _weights(model)
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero_i"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "model_state_cols"),
        numpy_helper.from_array(np.array([cfg.max_tokens], dtype=np.int64), "max_tokens"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one_f"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_f"),
        numpy_helper.from_array(np.array(MAX_PRICE, dtype=np.float32), "max_price"),
        numpy_helper.from_array(np.array(PAD, dtype=np.int64), "pad_row"),
    ]
    # Candidates are batch rows: every input is [N, 1] (Triton's dims [1] with max_batch_size);
    # the graph works on [N].
    nodes += [
        helper.make_node("Squeeze", [name, "axis1"], [_rows(name)], name=f"{INPUT_NODE_PREFIX}{name}")
        for name in INPUT_NAMES
    ]
    emb: dict[str, str] = {}
    keys_by_node: dict[str, list[str]] = {"vocab_token": vocabs["token"].keys()}
    for feature, inp in STRING_INPUTS.items():
        keys_by_node[f"vocab_{feature}"] = vocabs[feature].keys()
        nodes.append(_encoder(f"vocab_{feature}", _rows(inp), f"row_{feature}"))
        nodes.append(
            helper.make_node("Gather", [f"emb_{feature}", f"row_{feature}"], [f"e_{feature}"], axis=0)
        )
        emb[feature] = f"e_{feature}"

    # Query: lower-case, split on spaces, keep the first max_tokens, mean of token embeddings.
    nodes += [
        helper.make_node(
            "StringNormalizer",
            [_rows(QUERY_INPUT)],
            ["q_lower"],
            case_change_action="LOWER",
            locale="C.UTF-8",
        ),
        helper.make_node("StringSplit", ["q_lower"], ["q_tokens", "q_ntok"]),
        _encoder("vocab_token", "q_tokens", "q_rows_all"),
        helper.make_node("Slice", ["q_rows_all", "zero_i", "max_tokens", "axis1"], ["q_rows"]),
        helper.make_node("Gather", ["emb_token", "q_rows"], ["q_emb"], axis=0),
        helper.make_node("ReduceSum", ["q_emb", "axis1"], ["q_sum"], keepdims=0),
        helper.make_node("Not", ["q_is_pad"], ["q_real"]),
        helper.make_node("Equal", ["q_rows", "pad_row"], ["q_is_pad"]),
        helper.make_node("Cast", ["q_real"], ["q_real_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["q_real_f", "axis1"], ["q_count0"], keepdims=1),
        helper.make_node("Max", ["q_count0", "one_f"], ["q_count"]),
        helper.make_node("Div", ["q_sum", "q_count"], ["e_query"]),
    ]
    # Price: log1p(max(price, 0)) as one column. The contract asks for finite prices (freshrank's
    # backend refuses others); a server that cannot refuse them (the native ONNX Runtime backend)
    # scores NaN as no price and clamps infinities into the items contract's 0..1e9.
    nodes += [
        helper.make_node("IsNaN", [_rows(PRICE_INPUT)], ["p_nan"]),
        helper.make_node("Where", ["p_nan", "zero_f", _rows(PRICE_INPUT)], ["p_num"]),
        helper.make_node("Clip", ["p_num", "zero_f", "max_price"], ["p_pos"]),
        helper.make_node("Add", ["p_pos", "one_f"], ["p_1"]),
        helper.make_node("Log", ["p_1"], ["p_log"]),
        helper.make_node("Unsqueeze", ["p_log", "axis1"], ["p_col"]),
    ]
    features = [emb["user"], "e_query", emb["item"], emb["category"], emb["brand"]]
    features += ["x_ui", "x_qi", "x_qc", "p_col"]
    if cfg.text_dim:
        if vocabs.text is None:
            raise ValueError("expected vocabularies with a text encoder: the model has a text tower")
        text_nodes, text_arrays = _text_nodes(vocabs.text, titles or {}, keys_by_node)
        nodes += text_nodes
        nodes.append(helper.make_node("Mul", [emb["user"], "pt"], ["x_upt"]))
        w.update(text_arrays)
        features += ["qt_cos", "pt", "pq_pt", "x_upt"]
    nodes += [
        helper.make_node("Mul", [emb["user"], emb["item"]], ["x_ui"]),
        helper.make_node("Mul", ["e_query", emb["item"]], ["x_qi"]),
        helper.make_node("Mul", ["e_query", emb["category"]], ["x_qc"]),
        helper.make_node("Concat", features, ["x"], axis=1),
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h_pre"], transB=1),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logit_col"], transB=1),
        helper.make_node("Gather", ["item_bias", "row_item"], ["bias_col"], axis=0),
        helper.make_node("Add", ["logit_col", "bias_col"], ["logit_ids"]),
    ]
    if cfg.text_dim:  # the wide text terms: text_weight * cos(query, title) + P q . P t
        nodes += [
            helper.make_node("Mul", ["qt_cos", "text_weight"], ["wide_cos"]),
            helper.make_node("ReduceSum", ["pq_pt", "axis1"], ["wide_dot"], keepdims=1),
            helper.make_node("Add", ["wide_cos", "wide_dot"], ["wide_col"]),
            helper.make_node("Add", ["logit_ids", "wide_col"], ["logit2"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["logit_ids"], ["logit2"]))
    nodes += [
        helper.make_node("Squeeze", ["logit2", "axis1"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [_rows(OUTPUT)]),
        helper.make_node("Unsqueeze", [_rows(OUTPUT), "axis1"], [OUTPUT]),
        # model_state: one [version, delta_seq] row per candidate row (candidates are batch rows).
        helper.make_node(
            "Constant",
            [],
            ["model_state_row"],
            name="model_state_row",
            value=numpy_helper.from_array(np.array([[version, delta_seq]], dtype=np.int64)),
        ),
        helper.make_node("Shape", [_rows(OUTPUT)], ["model_state_n"], name="model_state_n"),
        helper.make_node(
            "Concat",
            ["model_state_n", "model_state_cols"],
            ["model_state_shape"],
            name="model_state_shape",
            axis=0,
        ),
        helper.make_node(
            "Expand", ["model_state_row", "model_state_shape"], [STATE_OUTPUT], name=STATE_OUTPUT
        ),
    ]
    # Topological order matters to the checker: "q_is_pad" is produced after its consumer above.
    nodes = _toposort(nodes, {i.name for i in inits} | set(w) | set(INPUT_NAMES))
    inputs = [helper.make_tensor_value_info(n, TensorProto.STRING, ["N", 1]) for n in INPUT_NAMES[:-1]]
    inputs.append(helper.make_tensor_value_info(PRICE_INPUT, TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(
        nodes,
        "freshrank_ranker",
        inputs,
        [
            helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info(STATE_OUTPUT, TensorProto.INT64, ["N", 2]),
        ],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="freshrank",
    )
    proto.ir_version = 9
    onnx.helper.set_model_props(proto, {VERSION_PROP: str(version), DELTA_SEQ_PROP: str(delta_seq)})
    # The big parts (weights, vocabularies) go in last, in place, so they are copied once.
    for name, arr in w.items():
        _add_initializer(proto.graph, name, arr)
    _fill_encoders(proto.graph, keys_by_node)
    return proto


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    done: list[onnx.NodeProto] = []
    ready = set(available)
    todo = list(nodes)
    while todo:
        progressed = False
        for node in list(todo):
            if all(i in ready for i in node.input if i):
                done.append(node)
                ready.update(node.output)
                todo.remove(node)
                progressed = True
        if not progressed:
            raise ValueError(f"graph has unresolved inputs: {[n.name or n.op_type for n in todo]}")
    return done


def write_onnx(proto: onnx.ModelProto, directory: Path) -> list[Path]:
    """Write ``model.onnx`` with its weights in ``model.onnx.data``; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        proto,
        str(directory / ONNX_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    return [p for p in (directory / ONNX_FILE, directory / DATA_FILE) if p.exists()]
