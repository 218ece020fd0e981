"""The four regions every pixel of a layer falls in (see :mod:`probe.recording.context` for how
they are brought to a layer's resolution): hole cells on a sketch stroke, hole cells off it, the
valid border band around the hole, and the far valid rest."""

HOLE_SKETCH, HOLE_PLAIN, BORDER, FAR = range(4)
REGIONS = ("hole_sketch", "hole_plain", "border", "far")
HOLE = [HOLE_SKETCH, HOLE_PLAIN]
VALID = [BORDER, FAR]
