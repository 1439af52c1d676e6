"""Sub-commands of the effdetseg console script, one module each."""
