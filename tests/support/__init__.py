"""What several test folders share, imported as ``tests.support.<module>``: real processes on free ports
(:mod:`~tests.support.processes`, :mod:`~tests.support.redis_server`, the TCP fault proxy
:mod:`~tests.support.netfault`, the no-op LoRAX-shaped backend :mod:`~tests.support.stub_backend`, which the
gateway benchmarks run too), PEFT adapter builders (:mod:`~tests.support.adapter_factory`) and the corpus of
hostile adapters (:mod:`tests.support.hostile`). A helper one folder alone uses stays in that folder."""
