class NmODE:  # placeholder until the nmODE issue lands
    def __init__(self, *a, **k):
        raise NotImplementedError("NmODE: work in progress")
