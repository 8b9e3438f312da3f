"""Run by every python kernel at its start (IPKernelApp.exec_files), in the user's
namespace, so everything here is private and deleted at the end.

What E2B's template registers in its IPython startup scripts, written anew:
- `e2b/chart` for matplotlib figures, through E2B's `e2b_charts` package;
- `e2b/data` for pandas DataFrames (timestamps as ISO strings);
- `application/json` for lists and dicts, through orjson (numpy values allowed);
- PIL images shown or saved to a path become display data, as in a notebook (PIL is
  patched when first imported).
Modules are looked up in sys.modules: nothing heavy is imported until the user does.
"""


def _hearth_setup():
    import sys

    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter, JSONFormatter
    from traitlets import ObjectName, Unicode

    class ChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict, str)

        def __call__(self, obj):
            figure = sys.modules.get("matplotlib.figure")
            if figure is None or not isinstance(obj, figure.Figure):
                return super().__call__(obj)
            from e2b_charts import chart_figure_to_dict

            try:
                return chart_figure_to_dict(obj)
            except Exception:
                return {}

    class DataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict, str)

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return super().__call__(obj)
            data = obj.to_dict(orient="list")
            return {
                key: [v.isoformat() if isinstance(v, pandas.Timestamp) else v for v in values]
                for key, values in data.items()
            }

    class OrjsonFormatter(JSONFormatter):
        def __call__(self, obj):
            if isinstance(obj, (list, dict)):
                try:
                    import orjson

                    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                    return orjson.loads(orjson.dumps(obj, option=options)), {"expanded": True}
                except (ImportError, TypeError):
                    pass
            return super().__call__(obj)

    shell = get_ipython()
    if shell is None:
        return
    formatters = shell.display_formatter.formatters
    formatters["e2b/chart"] = ChartFormatter(parent=shell.display_formatter)
    formatters["e2b/data"] = DataFormatter(parent=shell.display_formatter)
    formatters["application/json"] = OrjsonFormatter(parent=shell.display_formatter)

    def patch_pil():
        from IPython.display import display
        from PIL import Image, ImageShow

        class Screen(ImageShow.Viewer):
            # There is no screen: `image.show()` shows the image as display data instead.
            def show(self, image, **options):
                display(image)
                return 1

        ImageShow.register(Screen(), 0)
        original_save = Image.Image.save

        def save(image, fp, format=None, **params):
            if isinstance(fp, str):
                display(image)
            return original_save(image, fp, format, **params)

        Image.Image.save = save

    class PILHook:
        # Patches PIL.Image right after its first import, so PIL is not imported (1-2 MiB)
        # by every kernel that never uses it.
        def find_spec(self, name, path, target=None):
            if name != "PIL.Image":
                return None
            sys.meta_path.remove(self)
            from importlib.util import find_spec

            spec = find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                sys.modules[name] = module  # ImageShow imports it from there
                import contextlib

                with contextlib.suppress(Exception):
                    patch_pil()

            spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
            return spec

    if "PIL.Image" in sys.modules:
        patch_pil()
    else:
        sys.meta_path.insert(0, PILHook())


_hearth_setup()
del _hearth_setup
