"""bivit's W1A1 linears as bits in OpenVINO: the exported graph's ``MatMul(sign(x), +-1)`` become ``BinaryConvolution``.

OpenVINO's CPU plugin runs ``BinaryConvolution`` (opset1, mode ``xnor-popcount``) on packed bits; ONNX has no
such op, so ``surgery.export(to="openvino")`` converts the checked ONNX graph and then calls
:func:`rewrite_graph` (the method's ``openvino_graph``). A W1A1 linear ``alpha * (sign(x) @ S^T) + b`` (S the
+-1 weight signs) is a 1x1 binary convolution: x (B, T, C) is laid out as (B, C, T, 1), a two-level
``FakeQuantize`` at zero turns it into 0/1 codes (bivit's sign: x >= 0 -> +1), S is a ``u1`` constant, and
the convolution's integer output goes back to (B, T, out), where the graph's own alpha and bias follow.
The integers are exact, so the rewritten graph matches PyTorch to float rounding (the float graph it
replaces drifts: OpenVINO's float kernels move values near zero across the next sign). Measured
(``benchmarks/binary_openvino.py``): 1.7-3.1x of the float linear per ViT-B layer shape, 2.3-2.5x of fp32 for
the whole ViT-B/16 at batch 8 (the attention stays float matmuls of +-1 and {0, 1} values).

The CPU plugin runs ``BinaryConvolution`` on static shapes only, so the rewritten IR has the export's
input shape (its ``batch``): reshape the model (``ov.Model.reshape``) for another batch before compiling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLD = -float(np.finfo(np.float32).tiny)  # x >= 0 -> 1 (+1), as bivit's sign; x < 0 -> 0 (-1)


def uniform(node: Any) -> float | None:
    """The one value every element of ``node`` holds where it is a constant, broadcast, converted, negated
    or a product of such (the export's ``ones_like`` / ``-ones_like``), else None."""
    kind = node.get_type_name()
    if kind == "Constant":
        values = np.unique(np.asarray(node.get_data(), dtype=np.float64))
        return float(values[0]) if values.size == 1 else None
    if kind in ("Broadcast", "Convert", "Negative"):
        value = uniform(node.input(0).get_source_output().get_node())
        return None if value is None else (-value if kind == "Negative" else value)
    if kind == "Multiply":  # openvino.convert_model writes -x as x * -1
        factors = [uniform(node.input(i).get_source_output().get_node()) for i in range(2)]
        return None if None in factors else factors[0] * factors[1]
    return None


def u1_constant(signs: np.ndarray) -> Any:
    """(out, in) +-1 as an (out, in, 1, 1) ``u1`` constant: bit 1 for +1, least significant bit first."""
    import openvino as ov

    tensor = ov.Tensor(ov.Type.u1, ov.Shape([signs.shape[0], signs.shape[1], 1, 1]))
    packed = np.packbits((signs > 0).reshape(-1), bitorder="little")
    tensor.data[:] = packed[: tensor.data.size]
    return ov.op.Constant(tensor)


def binary_product(x: Any, signs: np.ndarray) -> Any:
    """sign(x) @ signs^T for x (B, T, C), as OpenVINO's BinaryConvolution on (B, C, T, 1), back in (B, T, out)."""
    import openvino.opset1 as op1
    import openvino.opset13 as ops

    image = ops.unsqueeze(ops.transpose(x, np.array([0, 2, 1])), np.array([3]))
    bits = ops.fake_quantize(image, np.float32(THRESHOLD), np.float32(THRESHOLD), np.float32(0), np.float32(1), 2)
    product = op1.binary_convolution(bits, u1_constant(signs), [1, 1], [0, 0], [0, 0], [1, 1], "xnor-popcount", 0.0)
    return ops.transpose(ops.squeeze(product, np.array([3])), np.array([0, 2, 1]))


def _binary_linear(node: Any) -> tuple[Any, np.ndarray] | None:
    """(x, signs (out, in)) when ``node`` is ``MatMul(Select(x >= 0, 1, -1), C)`` with a +-1 constant C on a
    rank-3 x, else None."""
    if node.get_type_name() != "MatMul" or node.get_attributes()["transpose_a"]:
        return None
    sign, weight = (node.input(i).get_source_output().get_node() for i in range(2))
    if sign.get_type_name() != "Select" or weight.get_type_name() != "Constant":
        return None
    compare = sign.input(0).get_source_output().get_node()
    if compare.get_type_name() != "GreaterEqual" or [
        uniform(sign.input(i).get_source_output().get_node()) for i in (1, 2)
    ] != [1.0, -1.0]:
        return None
    x = compare.input(0).get_source_output()
    if uniform(compare.input(1).get_source_output().get_node()) != 0.0 or x.get_partial_shape().rank.get_length() != 3:
        return None
    values = np.asarray(weight.get_data(), dtype=np.float32)
    signs = values if node.get_attributes()["transpose_b"] else values.T
    return (x, signs) if signs.ndim == 2 and np.isin(signs, (-1.0, 1.0)).all() else None


def binary_linears(model: Any, shape: Sequence[int] | None = None) -> int:
    """Replace every W1A1 ``MatMul`` of ``model`` (an ``openvino.Model``) by :func:`binary_product` (the same
    integers), first fixing its input ``shape`` where there is one to replace (the CPU plugin's
    BinaryConvolution takes static shapes only); returns how many were replaced."""
    from openvino.passes import ConstantFolding, Manager

    manager = Manager()
    manager.register_pass(
        ConstantFolding()
    )  # the +-1 weight signs, computed from the latent weights, become constants
    manager.run_passes(model)
    found = [(node, match) for node in model.get_ordered_ops() if (match := _binary_linear(node)) is not None]
    if found and shape is not None:
        model.reshape(list(shape))
    for node, (x, signs) in found:
        product = binary_product(x, signs)
        for target in list(node.outputs()[0].get_target_inputs()):
            target.replace_source_output(product.outputs()[0])
    model.validate_nodes_and_infer_types()
    return len(found)


def rewrite_graph(model: Any, options: Mapping[str, Any], shape: Sequence[int]) -> str | None:
    """The method's ``openvino_graph``: with 1-bit activations, run ``model``'s W1A1 linears as
    BinaryConvolution at the static input ``shape``; what was done, or None when nothing was (W1A32)."""
    if options.get("activations", "binary") != "binary":
        return None
    count = binary_linears(model, shape)
    return (
        (
            f"bivit: {count} W1A1 linears run as BinaryConvolution (xnor-popcount on u1 bits); "
            f"static input shape {list(shape)}"
        )
        if count
        else None
    )
