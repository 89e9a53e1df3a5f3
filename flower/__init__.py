"""lpfl on Flower: the LP-FL round as a Flower ServerApp and ClientApp.

The ServerApp drives lpfl's own round machine (:mod:`lpfl.rounds`): sampling, task settings,
update validation, clipping, aggregation and guards are lpfl's, and Flower only carries the
tasks and updates between the ServerApp and the ClientApps. The ClientApp runs lpfl's client
round (:class:`lpfl.client_round.LocalClient`) on its partition of the run's data. So a Flower
run of a run file ends with the global adapter ``lpfl simulate`` computes for the same file and
seed.
"""
