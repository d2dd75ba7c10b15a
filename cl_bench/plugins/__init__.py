"""Plugins: what composes with any method (stability-gap remedies, regularisers, ...),
chosen by config (`plugin=[...]`); see `base.Plugin`."""
