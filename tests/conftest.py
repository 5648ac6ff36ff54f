pytest_plugins = ["afnio_langchain.testing.fixtures"]
