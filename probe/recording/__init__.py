"""Recording: the record loop (:mod:`.loop`), the hooks' recorder (:mod:`.recorder`), the per-batch
conditions at each resolution (:mod:`.context`), calibration of the gate bins
(:mod:`.calibration`), the run manifest (:mod:`.manifest`), crash safety and ``--resume``
(:mod:`.resume`) and Ray scale-out (:mod:`.distributed`)."""
