"""Layer 2, toolkit: what plugins build from (module replacement and class swaps, attention helpers,
token layout and sizes, packed weights, training hooks, eval mode). Imports core only."""
