"""Methods the merge experiments compare, by their names in m2n2_jax's method registry."""

# M2N2 and the ablations of the paper's LLM experiment (its table 3): without split point, without
# attraction, and the GA (neither competition nor attraction).
PAPER_ABLATIONS = ("m2n2", "m2n2-no-split-point", "m2n2-no-attraction", "ga")
