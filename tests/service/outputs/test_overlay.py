import numpy as np

from service.outputs.overlay import overlay_array


def test_overlay_colours_hits_false_alarms_and_misses():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    pred = np.array([[1, 1], [0, 0]])
    ref = np.array([[1, 0], [1, 0]])
    out = overlay_array(rgb, pred, ref).astype(int)
    hit, false_alarm, miss, neither = out[0, 0], out[0, 1], out[1, 0], out[1, 1]
    assert hit[1] > hit[0] and hit[1] > hit[2]  # green
    assert false_alarm[0] > false_alarm[1] and false_alarm[0] > false_alarm[2]  # red
    assert miss[2] > miss[0] and miss[2] > miss[1]  # blue
    assert (neither == 100).all()
