"""
Chaos tests: faults of upstreams and clients against the real daemon and
real upstream processes (L{tests.chaos.support}; the misbehaving upstream is
L{tests.chaos.faulty}).  Each fault is its own test; each checks the client
that met the fault, a client streaming from another model at the same time,
orphaned processes and the daemon's file descriptors.
"""
