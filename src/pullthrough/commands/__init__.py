"""The operator's commands, one module each; ``pullthrough.cli`` dispatches to them."""
