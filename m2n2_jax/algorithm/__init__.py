"""The algorithm as pure functions on flat vectors: config, niches (competition), crossover
(attraction and SLERP with a split point), parameter groups, the evosax-shaped strategy and
recipe archives."""
