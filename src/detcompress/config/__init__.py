"""What the user asks for: the mmdet config, `--cfg-options`, compression presets and the
NNCF configuration schema they are checked against, merged into one nncf_config; and configs
stored in model files, read as data."""
