"""Run presets: TOML files of [model], [data] and [train] tables over the defaults in md4.config."""
