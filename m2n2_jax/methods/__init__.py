"""The search and merge methods: the registry (one table of every method), M2N2's baselines
(evosax strategies, MAP-Elites, brute-force SLERP) and the classic merges."""
