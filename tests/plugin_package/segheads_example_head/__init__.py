"""segheads-example-head: a pixel classifier registered from outside segheads (tests/test_plugins.py).

``heads`` registers ``mlp_softmax`` (the entry point imports it); ``broken`` holds a head with
seeded contract violations that ``segheads check-head`` must name, registered nowhere.
"""
