"""Graph simplification after tracing: constant Reshape targets instead of runtime shape arithmetic.

The tracer writes every ``view(b, n, h, d // h)`` as Shape -> Gather -> Div -> Cast -> Unsqueeze ->
Concat -> Reshape, because it cannot know which sizes are fixed.  In the decode step that is about
a third of all nodes, each costing a kernel launch per token.  Symbolic shape inference (ORT's
tool) knows the output shape of every Reshape in terms of the graph's dynamic axes; when each
output dim is a number or equal to the same-position input dim, the target becomes a constant
(``0`` = copy that input dim, at most one ``-1``) and the shape arithmetic feeding it is dropped.
The result is checked like every export: by the dynamic-size parity verification.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _dims(value_info) -> list | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def constant_reshape_targets(model):
    """Rewrite ``model`` (an onnx.ModelProto, in place) and return how many Reshapes were simplified."""
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    if inferred is None:
        return 0
    g = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not src or not dst:
            continue
        target = []
        for i, d in enumerate(dst):
            if isinstance(d, int) and d > 0:
                target.append(d)
            elif isinstance(d, str) and i < len(src) and src[i] == d and not d.startswith("unk__"):
                target.append(0)  # same symbolic size as the input's dim i: copy it
            else:
                target.append(None)
        if target.count(None) > 1 or (isinstance(dst[0], int) and dst[0] == 0):
            continue
        name = f"{node.output[0]}__shape"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([-1 if t is None else t for t in target], dtype=np.int64), name))
        node.input[1] = name
        changed += 1
    _drop_dead_nodes(model)
    log.debug("constant Reshape targets: %d", changed)
    return changed


def _drop_dead_nodes(model) -> None:
    """Remove nodes none of whose outputs reach a graph output (the orphaned shape arithmetic)."""
    live = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = live
    inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
