"""Neuron playground: one hidden neuron with 2–6 inputs; set its inputs, weights, bias and windows and watch V(t),
θ and the spike, next to the ReLU it computes (MATH §2, §6, §7). Needs no model."""

import streamlit as st

from ttfs_core.neurons import NEURON_MODELS, RESCALES
from ttfs_ui import controls, figures, state, tables
from ttfs_ui import playground as pg
from ttfs_ui.text import pretty

st.set_page_config(page_title="Neuron playground · TTFS explorer", page_icon="⚡", layout="wide")
state.init(pg.DEFAULTS, pg.PARAMS)  # a link may set the playground's numbers (`pg.PARAMS`)
pg.init()
controls.navigation()  # links to the other pages only: the playground needs no model
controls.show_notice()
fmt = figures.export_format(st)

st.title("Neuron playground")
st.caption(pretty("One hidden neuron of the exact ReLU → spike mapping. Its inputs are the spikes of a previous layer "
                  "with window B_in: input j with activation x_j fires at t_j = t_min^(n) − x_j. The neuron fires at "
                  "t = t_max^(n) − ReLU(Σ W x + b) when the mapping is exact. Every number below comes from "
                  "ttfs_core (a real one-neuron spiking network, simulated exactly)."))

st.markdown("**Presets** — each shows one lesson")
buttons = st.columns(len(pg.PRESETS))
for col, (name, preset) in zip(buttons, pg.PRESETS.items()):
    col.button(preset.label, key=f"pg_preset_{name}", on_click=pg.apply_preset, args=(name,), width="stretch")
if state.get(pg.PRESET):
    st.info(pg.PRESETS[state.get(pg.PRESET)].lesson)

knobs, view = st.columns([1.3, 2.4], gap="large")
with knobs:
    st.radio("Neuron model", list(NEURON_MODELS),
             format_func=lambda name: f"{NEURON_MODELS[name].label} ({NEURON_MODELS[name].section})",
             **state.bind(pg.NEURON))
    st.radio("Rescaling (α-model)", list(RESCALES), format_func=lambda name: RESCALES[name].label,
             disabled=not pg.settings(st.session_state).neuron.rescaled,
             **state.bind(pg.RESCALE),
             help="Function-preserving: the neuron's weights and bias are multiplied by c > 0 (and the weights "
                  "reading it by 1/c). 'sum': c = 0.99/ΣW where ΣW > 0.99; 'positive': c = 0.99/Σmax(W,0) where "
                  "that is > 0.99. B1 is never rescaled.")
    a, b = st.columns(2)
    a.number_input("input window B_in", step=0.1, format="%.4f", **state.bind(pg.IN_WINDOW))
    b.number_input("window B_n", step=0.1, format="%.4f", **state.bind(pg.WINDOW))
    st.number_input("bias b", step=0.05, format="%.4f", **state.bind(pg.BIAS))
    st.select_slider("inputs", options=list(range(pg.MIN_INPUTS, pg.MAX_INPUTS + 1)), **state.bind(pg.COUNT))
    for j in range(state.get(pg.COUNT)):
        a, b = st.columns(2)
        a.number_input(f"x_{j + 1}", step=0.05, format="%.4f", **state.bind(pg.X[j]),
                       help=pretty(f"activation of input {j + 1}, in [0, B_in]: it fires at t_min^(n) − x_{j + 1}"))
        b.number_input(f"W_{j + 1}", step=0.05, format="%.4f", **state.bind(pg.W[j]))
    st.checkbox("clock-driven trace (MATH §6)", **state.bind(pg.CLOCK))
    if state.get(pg.CLOCK):
        st.select_slider("tick dt (τ_c)", options=list(pg.DT_OPTIONS), **state.bind(pg.DT))

state.write_url(pg.PARAMS, pg.DEFAULTS)  # the address is a link to these numbers
settings = pg.settings(st.session_state)
outcome, errors = pg.run(settings)
with view:
    if errors:
        for message in errors:
            st.error(message)
        st.stop()
    level, message = pg.verdict(outcome)
    getattr(st, level)(message)
    st.plotly_chart(pg.figure(outcome), key="playground_v",
                    config=figures.export_config(pg.export_stem(st.session_state), fmt))
    st.latex(pg.exactness_latex(outcome))
    if outcome.stepped_spike is not None:
        st.caption(f"Clock-driven spike at t = {outcome.stepped_spike:.17g} (tick dt = {settings.dt:g}); exact "
                   f"t = {outcome.spike:.17g}; error {outcome.stepped_spike - outcome.spike:.3g} τ_c.")

eq, inputs_col = st.columns([1.1, 1], gap="large")
with eq:
    st.subheader("The equations, with your numbers")
    for line in pg.equations(outcome):
        st.latex(line)
with inputs_col:
    st.subheader("Inputs")
    inputs = pg.inputs_table(outcome)
    st.dataframe(inputs, hide_index=True, width="stretch", column_config=tables.number_config(inputs, st.column_config))
st.subheader("Numbers")  # the page's whole width: every value and its 17 digits show uncut
rows = pg.numbers(outcome)
st.dataframe(rows, hide_index=True, width="stretch", height=35 * (len(rows) + 1) + 3,
             column_config={"quantity": st.column_config.TextColumn("quantity", width="medium"),
                            "value": st.column_config.NumberColumn("value", format=tables.NUMBER_FORMAT,
                                                                   width="medium"),
                            "digits": st.column_config.TextColumn("all 17 digits", width="large")})

if settings.neuron.rescaled:
    st.subheader("Why Σ W < 1: the blow-up as Σ W → 1")
    st.caption(f"Your weights after rescaling have Σ W = {outcome.sum_w:.6g} (factor c = {outcome.scale:.6g}), so the "
               f"final slope is α/(1 − ΣW) = {outcome.slope:.6g} and J = ({', '.join(f'{v:.4g}' for v in outcome.J)}). "
               "Scaling the same weights towards Σ W = 1 makes the slope and every J diverge (at Σ W ≥ 1 the slope "
               "would be infinite or negative and V would never reach θ after t_min): this is why the weights are "
               "rescaled to Σ W ≤ 0.99 before the mapping.")
    blowup = pg.blowup(outcome)
    st.dataframe(blowup, hide_index=True, width="stretch", column_config=tables.number_config(blowup, st.column_config))
else:
    st.caption(pretty(f"{settings.neuron.label} uses J = W without any transform or rescaling, and slope "
                      f"{settings.neuron.constant_slope:g} from t_min^(n) on: there is no Σ W < 1 requirement."))
