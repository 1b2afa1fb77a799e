def nmode_solve(*a, **k):  # placeholder until the nmODE issue lands
    raise NotImplementedError("nmode_solve: work in progress")
