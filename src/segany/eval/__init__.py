"""Zero-shot evaluation (SAM paper §7 and Appendix D).

Model-independent building blocks (import the submodules directly; nothing is imported here so
that ``import segany.eval`` stays cheap):

* :mod:`segany.eval.metrics` -- mask IoU, interactive mIoU@k / NoC, COCO mask AP and proposal AR.
* :mod:`segany.eval.edges` -- the BSDS500 edge benchmark (ODS / OIS / AP / R50).
* :mod:`segany.eval.edge_maps` -- SAM's edge maps from mask probabilities (Sobel, edge NMS).
* :mod:`segany.eval.baselines` -- GrabCut and Otsu driven by the same prompts, for context.

The protocol runners (points, boxes, ...) in the sibling modules build on these. Simulated clicks
live in :mod:`segany.ops.clicks`, shared with training.
"""
