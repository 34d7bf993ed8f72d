"""The synthetic world: learnable scenes written in the exact real dataset formats."""
