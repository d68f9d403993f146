"""The numerics of a net, on the host: everything that is true of a net without a board.

The spec a user writes (`spec`), the quantised net and its hyper-parameters (`qnet`), the
quantiser (`quantize`) and the static range proof it relies on (`ranges`), the float64
reference (`reference`, with Adam, swish and mish) and its second-order methods
(`second_order`: Jacobians, Gauss-Newton, Levenberg-Marquardt, Hessian diagonals), the
bit-identical numpy integer twin (`twin`), the generator of the core's tables (`tables`),
.ebp files (`ebpfile`), the memory planner (`planner`), gradient validation (`validate`) and
float-beside-fixed training (`train`).

May import: numpy and the portable core (`edgebp.*`). Never `edgebp.host.boards`,
`edgebp.host.fleet`, `edgebp.host.bench` or `edgebp.host.cli`.
"""
