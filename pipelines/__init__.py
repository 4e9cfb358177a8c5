"""Prefect flows: thin wiring around the agents in crowdforge.agents."""
