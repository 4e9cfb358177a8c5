"""crowdforge: collaborative training on crowdsourced data."""
