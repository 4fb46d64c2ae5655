"""Baselines of the paper: evosax strategies, MAP-Elites and brute-force SLERP search."""
