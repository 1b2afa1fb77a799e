"""The Runge-Kutta methods odekern ships, as checked tableaus (see ``tableau.py``).

Adding a method = adding a tableau here plus one registry line in ``registry.py``.
"""

from __future__ import annotations

from fractions import Fraction as F

from odekern.solvers.tableau import ButcherTableau, polynomial_weights_at

EULER = ButcherTableau(name="euler", order=1, c=(0,), a=((),), b=(1,))

# Explicit midpoint: one half step with Euler, then the full step with the midpoint slope.
MIDPOINT = ButcherTableau(
    name="midpoint", order=2,
    c=(0, F(1, 2)),
    a=((), (F(1, 2),)),
    b=(0, 1),
)

# Heun's second- and third-order methods (torchdiffeq's ``heun2`` / ``heun3``).
HEUN2 = ButcherTableau(name="heun2", order=2, c=(0, 1), a=((), (1,)), b=(F(1, 2), F(1, 2)))
HEUN3 = ButcherTableau(
    name="heun3", order=3,
    c=(0, F(1, 3), F(2, 3)),
    a=((), (F(1, 3),), (0, F(2, 3))),
    b=(F(1, 4), 0, F(3, 4)),
)

# Kutta's 3/8 rule. torchdiffeq's ``rk4`` uses this one (``rk4_alt_step_func``), so odekern's
# ``rk4`` does too and matches it.
RK4_38 = ButcherTableau(
    name="rk4", order=4,
    c=(0, F(1, 3), F(2, 3), 1),
    a=((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)),
    b=(F(1, 8), F(3, 8), F(3, 8), F(1, 8)),
)

# The classic RK4 (used by the seed continuous-unet code).
RK4_CLASSIC = ButcherTableau(
    name="rk4_classic", order=4,
    c=(0, F(1, 2), F(1, 2), 1),
    a=((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
    b=(F(1, 6), F(1, 3), F(1, 3), F(1, 6)),
)

# Dormand-Prince 5(4) with the 7th stage at the new solution (FSAL). ``b_err`` is the 5th-order
# minus the embedded 4th-order weights; ``b_mid`` is Shampine's dense output at theta = 1/2
# (the same midpoint torchdiffeq fits its quartic interpolant through).
_DP5_B = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
# The embedded 4th-order weights torchdiffeq uses (not the textbook 5179/57600 set): with
# them odekern's controller sees the same error estimates and takes the same steps.
_DP4_B = (F(1951, 21600), 0, F(22642, 50085), F(451, 720), F(-12231, 42400), F(649, 6300), F(1, 60))
DOPRI5 = ButcherTableau(
    name="dopri5", order=5,
    c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
    a=(
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        _DP5_B[:6],
    ),
    b=_DP5_B,
    b_err=tuple(F(x) - F(y) for x, y in zip(_DP5_B, _DP4_B)),
    b_mid=(F(6025192743, 30085553152) / 2, 0, F(51252292925, 65400821598) / 2,
           F(-2691868925, 45128329728) / 2, F(187940372067, 1594534317056) / 2,
           F(-1776094331, 19743644256) / 2, F(11237099, 235043384) / 2),
)

# The embedded pairs below are torchdiffeq's, down to its choices of error weights and of the
# midpoint its quartic dense output passes through, so that both libraries take the same steps.
# For the three that are not FSAL (adaptive_heun, fehlberg2) torchdiffeq reuses the last stage
# as the next step's first stage and as the end slope of the dense output; the adaptive solver
# does the same for every tableau (for FSAL ones that stage *is* f(t1, y1)).

# Heun's method with the explicit Euler step as the embedded first-order solution.
ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun", order=2,
    c=(0, 1),
    a=((), (1,)),
    b=(F(1, 2), F(1, 2)),
    b_err=(F(-1, 2), F(1, 2)),  # b - (1, 0); torchdiffeq stores the negation (only |err| matters)
    b_mid=(F(1, 2), 0),
)

# Fehlberg's RK1(2): the last stage is evaluated on the first-order solution.
FEHLBERG2 = ButcherTableau(
    name="fehlberg2", order=2,
    c=(0, F(1, 2), 1),
    a=((), (F(1, 2),), (F(1, 256), F(255, 256))),
    b=(F(1, 512), F(255, 256), F(1, 512)),
    b_err=(F(1, 512) - F(1, 256), 0, F(1, 512)),  # b - (1/256, 255/256, 0)
    b_mid=(0, F(1, 2), 0),
)

# Bogacki-Shampine 3(2), FSAL.
_BS3_B = (F(2, 9), F(1, 3), F(4, 9), 0)
BOSH3 = ButcherTableau(
    name="bosh3", order=3,
    c=(0, F(1, 2), F(3, 4), 1),
    a=((), (F(1, 2),), (0, F(3, 4)), _BS3_B[:3]),
    b=_BS3_B,
    b_err=tuple(x - y for x, y in zip(_BS3_B, (F(7, 24), F(1, 4), F(1, 3), F(1, 8)))),
    b_mid=(0, F(1, 2), 0, 0),
)

# Dormand-Prince 8(7) (Prince & Dormand 1981, rational approximations of 13 stages) with a 14th,
# FSAL stage at the new solution. The 8th-order weights are the last stage's row; _DP7_B are the
# embedded 7th-order weights.
_DP8_A = (
    (),
    (F(1, 18),),
    (F(1, 48), F(1, 16)),
    (F(1, 32), 0, F(3, 32)),
    (F(5, 16), 0, F(-75, 64), F(75, 64)),
    (F(3, 80), 0, 0, F(3, 16), F(3, 20)),
    (F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000),
     F(23124283, 1800000000)),
    (F(16016141, 946692911), 0, 0, F(61564180, 158732637), F(22789713, 633445777),
     F(545815736, 2771057229), F(-180193667, 1043307555)),
    (F(39632708, 573591083), 0, 0, F(-433636366, 683701615), F(-421739975, 2616292301),
     F(100302831, 723423059), F(790204164, 839813087), F(800635310, 3783071287)),
    (F(246121993, 1340847787), 0, 0, F(-37695042795, 15268766246), F(-309121744, 1061227803),
     F(-12992083, 490766935), F(6005943493, 2108947869), F(393006217, 1396673457),
     F(123872331, 1001029789)),
    (F(-1028468189, 846180014), 0, 0, F(8478235783, 508512852), F(1311729495, 1432422823),
     F(-10304129995, 1701304382), F(-48777925059, 3047939560), F(15336726248, 1032824649),
     F(-45442868181, 3398467696), F(3065993473, 597172653)),
    (F(185892177, 718116043), 0, 0, F(-3185094517, 667107341), F(-477755414, 1098053517),
     F(-703635378, 230739211), F(5731566787, 1027545527), F(5232866602, 850066563),
     F(-4093664535, 808688257), F(3962137247, 1805957418), F(65686358, 487910083)),
    (F(403863854, 491063109), 0, 0, F(-5068492393, 434740067), F(-411421997, 543043805),
     F(652783627, 914296604), F(11173962825, 925320556), F(-13158990841, 6184727034),
     F(3936647629, 1978049680), F(-160528059, 685178525), F(248638103, 1413531060), 0),
)
_DP8_B = (F(14005451, 335480064), 0, 0, 0, 0, F(-59238493, 1068277825), F(181606767, 758867731),
          F(561292985, 797845732), F(-1041891430, 1371343529), F(760417239, 1151165299),
          F(118820643, 751138087), F(-528747749, 2220607170), F(1, 4), 0)
_DP7_B = (F(13451932, 455176623), 0, 0, 0, 0, F(-808719846, 976000145), F(1757004468, 5645159321),
          F(656045339, 265891186), F(-3867574721, 1518517206), F(465885868, 322736535),
          F(53011238, 667516719), F(2, 45), 0, 0)
# Its continuous extension, per stage the coefficients of theta**1 .. theta**6 (stages not listed
# have weight zero). torchdiffeq only uses its value at theta = 1/2, as the midpoint of the quartic
# dense output, and so does odekern (the same interpolant gives the same outputs).
_DP8_DENSE = {
    0: ("1.0", "-6.6910181737837595697", "19.9990069333683970610", "-30.0610568289666450593",
        "22.1396504998094068976", "-6.3448349392860401388"),
    5: ("0", "-7.6142658045872677172", "52.2273532792945524050", "-121.4999627731334642623",
        "116.4422149550342161651", "-39.6107919852202505218"),
    6: ("0", "10.7281392630428866124", "-46.8919164181093621583", "83.1721004639847717481",
        "-67.1451318825957197185", "20.3761213808791436958"),
    7: ("0", "0.5526637063753648783", "-0.1890893225010595467", "9.5724507555993664382",
        "-16.5672243527496524646", "7.3347098826795362023"),
    8: ("0", "4.2186562625665153803", "-35.7075975946222072821", "87.8406057677205645007",
        "-89.9916014847245016028", "32.8801774352459155182"),
    9: ("0", "-0.6627209125361597559", "6.2736448083240352160", "-17.4152107770762969005",
        "22.6237489648532849093", "-10.1588990526426760954"),
    10: ("0", "-1.2636789001135462218", "10.3160881272450748458", "-28.5903289514790976966",
         "32.2362340167355370113", "-12.5401268098782561200"),
    11: ("0", "5.4106037898590422230", "-34.7650769866611817349", "81.6630950584341412934",
         "-82.1020315488359848644", "29.5553001484516038033"),
    12: ("0", "-7.0321379067945741781", "47.7457971078225540396", "-114.9375291377009418170",
         "116.2662185791119533462", "-41.7923486424390588923"),
    13: ("0", "2.3537586759714983486", "-19.0082099341608028453", "50.2558364226176017553",
         "-53.9020777466385396792", "20.3006925822100825485"),
}
_DP8_DENSE_ROWS = tuple(tuple(F(_DP8_DENSE[j][p]) if j in _DP8_DENSE else F(0) for j in range(14))
                          for p in range(6))
DOPRI8 = ButcherTableau(
    name="dopri8", order=8,
    c=(0, F(1, 18), F(1, 12), F(1, 8), F(5, 16), F(3, 8), F(59, 400), F(93, 200),
       F(5490023248, 9719169821), F(13, 20), F(1201146811, 1299019798), 1, 1, 1),
    a=(*_DP8_A, _DP8_B[:13]),
    b=_DP8_B,
    b_err=tuple(x - y for x, y in zip(_DP8_B, _DP7_B)),
    b_mid=polynomial_weights_at(_DP8_DENSE_ROWS, F(1, 2)),
)

# Tsitouras 5(4) (Tsitouras 2011, "Runge-Kutta pairs of order 5(4) satisfying only the first
# column simplifying assumption"), FSAL, coefficients as published (decimals). Not in
# torchdiffeq; its controller is dopri5's, its dense output the paper's own continuous extension.
_TS5_B = ("0.09646076681806523", "0.01", "0.4798896504144996", "1.379008574103742",
          "-3.290069515436081", "2.324710524099774", 0)
# b - b_hat as published, with the sign of the last entry corrected (the paper prints +1/66;
# the pair needs -1/66, as OrdinaryDiffEq.jl, diffrax and torchode use).
_TS5_ERR = ("0.00178001105222577714", "0.0008164344596567469", "-0.007880878010261995",
            "0.1447110071732629", "-0.5823571654525552", "0.45808210592918697", F(-1, 66))


def _poly(scale: str, *factors: tuple) -> list[F]:
    """``scale * prod(factors)``; a factor is its coefficients, lowest power of theta first."""
    coeffs = [F(scale)]
    for factor in factors:
        out = [F(0)] * (len(coeffs) + len(factor) - 1)
        for i, x in enumerate(coeffs):
            for j, y in enumerate(factor):
                out[i + j] += x * F(y)
        coeffs = out
    return coeffs


_THETA, _THETA2 = (0, 1), (0, 0, 1)
# The paper's interpolation weights b_j(theta) in its factored form, one per stage.
_TS5_INTERPOLANT = (
    _poly("-1.0530884977290216", _THETA, ("-1.3299890189751412", 1),
          ("0.7139816917074209", "-1.4364028541716351", 1)),
    _poly("0.1017", _THETA2, ("1.2949852507374631", "-2.1966568338249754", 1)),
    _poly("2.490627285651252793", _THETA2, ("1.57803468208092486", "-2.38535645472061657", 1)),
    _poly("-16.54810288924490272", _THETA2, ("-1.21712927295533244", 1), ("-0.61620406037800089", 1)),
    _poly("47.37952196281928122", _THETA2, ("-1.203071208372362603", 1), ("-0.658047292653547382", 1)),
    _poly("-34.87065786149660974", _THETA2, ("-1.2", 1), ("-0.666666666666666667", 1)),
    _poly("2.5", _THETA2, (-1, 1), ("-0.6", 1)),
)
TSIT5 = ButcherTableau(
    name="tsit5", order=5,
    c=(0, "0.161", "0.327", "0.9", "0.9800255409045097", 1, 1),
    a=(
        (),
        ("0.161",),
        ("-0.008480655492356989", "0.335480655492357"),
        ("2.8971530571054935", "-6.359448489975075", "4.3622954328695815"),
        ("5.325864828439257", "-11.748883564062828", "7.4955393428898365", "-0.09249506636175525"),
        ("5.86145544294642", "-12.92096931784711", "8.159367898576159", "-0.071584973281401",
         "-0.02826905039406838"),
        _TS5_B[:6],
    ),
    b=_TS5_B,
    b_err=_TS5_ERR,
    # Rows theta**1 .. theta**4 (no b_j has a constant term).
    b_dense=tuple(tuple(bj[p] for bj in _TS5_INTERPOLANT) for p in range(1, 5)),
)

ALL_TABLEAUS = {t.name: t for t in (EULER, MIDPOINT, HEUN2, HEUN3, RK4_38, RK4_CLASSIC, DOPRI5,
                                    ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI8, TSIT5)}
