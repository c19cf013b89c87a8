"""`headprune optimize`: the fastest deployment within a quality budget, chosen on a dev split and proven on a held-out
test split through the real server.

levers.py says which levers (pruning, distillation, INT8) apply to which task, workshop.py makes candidates
(plans, checkpoints, exports), search.py chooses on the dev split, proof.py measures the choice once on the test
split and installs it, report.py writes what was found, pipeline.py runs them in order.
"""
