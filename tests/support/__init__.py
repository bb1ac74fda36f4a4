"""What the tests share: fakes, builders, data, and the test clusters' descriptions.

A test module imports these from here, never from a conftest.py or from another test
module; conftest.py files keep their fixtures and import their helpers from here too.
Nothing here is collected as a test (no module is named ``test_*``).
"""
