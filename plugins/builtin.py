"""The built-in plugin: the hook implementations that declare the quantization flow."""
