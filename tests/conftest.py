import os

# Tests run offline: litellm (under dspy) must use its bundled price list, not fetch one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytest_plugins = ["afnio_langchain.testing.fixtures"]
