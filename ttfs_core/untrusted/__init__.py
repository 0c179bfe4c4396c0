"""Everything that reads bytes from outside: users' model files (uploads are untrusted, so nothing in them may run
Python code), and the readers the rest of the package uses for `.npz` datasets (:mod:`.npz`), images
(:mod:`.images`) and safetensors files (:mod:`.tensors`). This package is the security boundary.

The modules: :mod:`.loader` (entry points), :mod:`.sandbox` and :mod:`.zygote` (the sandboxed child),
:mod:`.files` (stat, read, format, zip checks), :mod:`.tensors` (pickles, tensors, safetensors, state dicts),
:mod:`.export` (``.pt2``), :mod:`.torchscript`, :mod:`.handover` (child -> caller), :mod:`.allowlist` (what a
rebuilt graph may call), :mod:`.npz`, :mod:`.images`, :mod:`.network_file` and :mod:`.network_schema` (saved
networks, for `persist`); :mod:`.errors` (ModelLoadError).

Formats, recognised by content (the extension is not trusted): a ``torch.export`` program (``.pt2``),
a TorchScript archive (``torch.jit.save``), and a state dict (``.safetensors``, or a ``torch.save``
zip / legacy pickle) that needs ``arch``. :func:`load_model` returns an eval-mode module that
``torch.fx.symbolic_trace`` can trace, or a ``torch.fx.GraphModule``; every failure is a one-line
:class:`ModelLoadError`.

**Isolation.** :func:`load_model` parses the file in a sandboxed child process (:mod:`.sandbox`:
memory, CPU-time and wall-clock limits, no file writing, a seccomp filter where available). The child hands
back plain data only -- a JSON description of the model and its tensors as safetensors bytes -- and this
process rebuilds the model from that without running anything from the file: for torch.export and TorchScript
files an fx graph whose nodes call allow-listed ``torch.ops.aten`` / ``operator`` functions, for state dicts the
named torchvision / zoo architecture (built by our code, on the ``meta`` device first so that the file's shapes
and dtypes are checked before anything is allocated). The child's output is validated like any other input.
A crash, timeout or memory exhaustion in the child is one :class:`ModelLoadError`; this process keeps running.
``loader._load_in_process`` runs the same parsing and checks without the sandbox (the child's code path; for
debugging and benchmarks).

**Checks before torch parses anything** (in the child; the file-type and size checks also here, before a child
is started): the path must be a regular file (FIFOs, devices and folders are refused without being opened for
reading: ``O_NONBLOCK``) of at most :data:`.files.MAX_FILE_BYTES`; zip archives are limited in members,
declared uncompressed size (:data:`.files.MAX_UNCOMPRESSED`) and per-member compression ratio
(:data:`.files.MAX_ZIP_RATIO`) before anything is decompressed, and torch only sees a canonical stored copy of
the checked members, built in memory (no temporary files); pickles are simulated with ``pickletools`` and
refused when nested deeper than :data:`.tensors.MAX_PICKLE_DEPTH`; safetensors headers are parsed by us
(:func:`.tensors.parse_header`: duplicate names refused, each tensor's shape × dtype size must equal its byte
range, no overlapping ranges, only known dtypes) and the tensors made from those ranges; tensors must not
overlap in memory (stride 0) nor reach outside their storage.

What we found about safety (torch 2.14.1):

* ``torch.export.load`` (and ``ExportedProgram.module()``) is NOT safe on untrusted files. Demonstrated
  with crafted files: (1) the sample inputs ``data/sample_inputs/model.pt`` are always a pickle, and
  ``deserialize_torch_artifact`` retries a failed ``weights_only=True`` load with ``weights_only=False``,
  so a ``__reduce__`` calling ``os.system`` runs; (2) ``expr_str`` strings in ``models/model.json`` go
  to ``sympy.sympify``, i.e. ``eval`` (also ``9**9**9`` or a factorial: a hang); (3) ``guards_code`` in
  ``model.json`` is ``exec``'d by ``.module()``. From reading the source: weights/constants flagged
  ``use_pickle`` are loaded with ``weights_only=False``, opaque constants with ``pickle.loads``,
  ``data/aotinductor/`` shared libraries are ``dlopen``'d, the pre-2.8 zip layout takes the same pickle
  fallback, node names / stack traces end up in the Python source that fx generates and ``exec``s, weights
  are ``as_strided`` views with the sizes and strides the file declares (stride 0: a few bytes pose as a huge
  tensor) and a zero-byte weight member becomes ``torch.zeros(declared sizes)``. (Graph targets such as
  ``torch.os.system`` are stopped by torch's verifier.) Mitigation here: the archive must hold exactly the
  members ``torch.export.save`` writes for one model (no pickled payloads, custom/opaque objects, AOTInductor
  code); weight and constant metadata must describe dense, non-overlapping CPU tensors inside their stored
  bytes; the sample inputs must load with ``weights_only=True`` and are re-saved by us; ``model.json`` is
  validated (op targets only ``torch.ops.aten.*`` and a few ``_operator`` functions; strings limited to
  ``[A-Za-z0-9_.:+-]``; ``expr_str`` must fit a small whitelist, :func:`.export._check_expr`) and stripped of node
  metadata and ``guards_code``.
* ``torch.jit.load`` does not unpickle Python objects (its C++ unpickler refuses globals such as
  ``posix.system``: demonstrated), but it does run TorchScript code from the file while loading
  (``__setstate__``: demonstrated writing a file with ``torch.save``, i.e. ``aten::save``;
  ``aten::from_file`` reads files), and its parser and unpickler recurse without limits (brackets nested
  20,000 deep in a code file, lists nested 300,000 deep in ``data.pkl``: segfaults). Mitigation: the
  archive's members must fit torch's layout (``code/**.py``, ``data/<n>``, ``constants/<n>``, the pickles and
  version records); every code member (by structure, wherever it sits under ``code/``) is refused if it mentions
  ``__setstate__``, nests brackets deeper than :data:`.torchscript.MAX_CODE_NESTING` or its syntax tree deeper than
  :data:`.torchscript.MAX_CODE_DEPTH`; debug pickles and extra files are left out of the canonical copy; the inlined
  forward graph may only use allow-listed node kinds (no file, process or network ops) before
  ``torch.jit.freeze``, whose constant propagation executes ops; the scripted module is never called but
  translated into an fx graph of ``torch.ops.aten`` calls (:func:`script_to_fx`).
* State dicts: safetensors cannot hold code; ``torch.load`` is only called with ``weights_only=True``.
  A state dict must fit its architecture exactly (keys, shapes, and dtypes: int, bool and complex tensors
  are not cast into float weights).

Limits: torch's C++ readers (zip, TorchScript parser and unpickler) remain attack surface for memory-safety
bugs; the sandbox contains them (a crash is an error message) but cannot make them correct. A legacy
(non-zip) ``torch.save`` file declares its storage sizes in its pickle; a huge declaration is stopped by the
sandbox's memory limit rather than by a check. Running a loaded graph (conversion, :func:`check_input`)
happens in the caller's process: the graph holds only aten ops, but their shape arguments can still ask for
a lot of memory. TorchScript forward hooks are ignored.
"""

from __future__ import annotations

from .errors import SUPPORTED_FORMATS, ModelLoadError
from .loader import check_input, load_model
from .torchscript import script_to_fx

__all__ = ["ModelLoadError", "SUPPORTED_FORMATS", "check_input", "load_model", "script_to_fx"]
