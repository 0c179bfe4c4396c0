"""Simulating a converted network (MATH §6): the spiking dynamics, one layer from its sources' spikes (exact and
clock-driven), the early-spike certificate, membrane traces and the result records.

    dynamics   first crossing, settling spikes, V(t), max pooling on spike times, one weighted sum over synapses
    layer      arrivals, one hidden layer exactly, the fan-in gather and search, the readout potential
    stepped    the clock: ticks, the tick an input is seen at, the fast clock-driven layer and the loop reference
    certify    the fast early-spike certificate and the peak drive
    trace      one neuron's membrane trace
    result     LayerResult, SimResult

Nothing here imports the network (`ttfs_core.network` orchestrates these functions), so there is no circle.
"""
