def odeint(*a, **k):  # placeholder until the foundation issue lands
    raise NotImplementedError("odeint: work in progress")


def odeint_adjoint(*a, **k):  # placeholder until the foundation issue lands
    raise NotImplementedError("odeint_adjoint: work in progress")
