"""The program that runs ON a Machine, as root, to gather its facts in one session.

It is sent as source (base64 in the command line, so no quoting can break it)
and run with the Machine's own python3, which a Django image always has. It
must stay self-contained: standard library only, Python 3.8 syntax, no volguard
imports. It prints one JSON object between two marker lines.

Facts: the mount destination's device against the root filesystem's, the
mountinfo entry covering it (type, options), free space and inodes, the app
processes (user, cwd, MEDIA_ROOT from their environment), MEDIA_ROOT's owner
and mode, a real write as the app's own user, and the cross-Machine visibility
probe (write, look for, remove). Probe files are created with O_EXCL and
O_NOFOLLOW, always removed, and a watchdog removes a visibility probe by
itself after `ttl` seconds, even if the run that wrote it is killed.

A second mode, `{"manage": {...}}` (`volguard remediate`), runs one manage.py
command instead: as the app user, in the app process's cwd, with the app
process's environment read from /proc/<pid>/environ (a `fly ssh console`
session runs as root and may not see the app's secrets, DATABASE_URL among
them). The argv arrives inside the base64 arguments and is exec'd, never
given to a shell; stdout and stderr are captured up to a cap.
"""

PROBE_SOURCE = r'''
import base64, json, os, pwd, shlex, signal, stat, subprocess, sys, threading, time

BEGIN, END = "__VOLGUARD_FACTS_BEGIN__", "__VOLGUARD_FACTS_END__"
PREFIX = ".volguard-probe-"


def main(args):
    if args.get("manage"):
        return manage(args["manage"])
    facts = {"errors": []}
    if args.get("look_only"):
        root = args.get("media_root")
        facts["visible"] = dict(
            (name, bool(root) and os.path.lexists(os.path.join(root, name)))
            for name in args.get("look_for", [])
        )
        return facts
    if args.get("cleanup_only"):
        for name in args.get("remove", []):
            remove_probe(args.get("media_root"), name, facts)
        return facts
    dest = args["destination"]
    facts["destination"] = dest
    facts.update(filesystem(dest, facts))
    procs = app_processes(args.get("app_user"), args.get("group"))
    facts["processes"] = procs
    user = args.get("app_user") or (procs[0]["user"] if procs else None)
    facts["app_user"] = user
    media_root = None
    if procs and args.get("manage_py"):
        media_root = ask_django(args["manage_py"], procs[0], user, facts)
        if media_root:
            facts["media_root_source"] = "Django settings (manage.py)"
    if not media_root and procs and procs[0].get("media_root"):
        media_root = procs[0]["media_root"]
        facts["media_root_source"] = "process environment"
    elif not media_root and args.get("media_root"):
        media_root = args["media_root"]
        facts["media_root_source"] = "configuration"
    facts["media_root"] = media_root
    if media_root:
        real = os.path.realpath(media_root)
        facts["media_root_real"] = real
        facts.update(ownership(real))
        facts["media_root_device"] = device(real)
        facts["write_test"] = write_as(user, real, args["run_id"]) if user else None
    for name in args.get("remove", []):
        remove_probe(media_root, name, facts)
    if args.get("write_visibility_probe") and media_root and user:
        facts["visibility_probe"] = write_visibility_probe(user, media_root, args, facts)
    if args.get("look_for"):
        facts["visible"] = dict(
            (name, bool(media_root) and os.path.lexists(os.path.join(media_root, name)))
            for name in args["look_for"]
        )
    return facts


def manage(spec):
    """Run `manage_py + argv` as the app user, in the app's cwd, with the app's environment."""
    out = {"errors": []}
    app_user = spec.get("app_user")
    procs = app_processes(app_user, spec.get("group"))
    if not procs:
        who = " of user %s" % app_user if app_user else ""
        out["errors"].append("no app process%s found on this Machine" % who)
        return out
    proc = procs[0]
    user = app_user or proc["user"]
    try:
        entry = pwd.getpwnam(user)
        env = process_environment(proc["pid"])
    except (KeyError, OSError) as e:
        out["errors"].append("cannot become the app user %s: %s" % (user, e))
        return out
    for path in spec.get("make_dirs") or []:
        make_dir_for(path, entry, out)
    argv = shlex.split(spec.get("manage_py") or "python3 manage.py") + list(spec["argv"])
    cap = int(spec.get("max_output", 16 << 20))
    result = {
        "argv": argv, "user": user, "uid": entry.pw_uid, "cwd": proc["cwd"], "pid": proc["pid"],
        "returncode": None,
    }
    out["manage"] = result

    def become():
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    try:
        child = subprocess.Popen(
            argv, cwd=proc["cwd"], env=env, preexec_fn=become, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except (OSError, subprocess.SubprocessError) as e:
        out["errors"].append("cannot run %s: %s" % (argv[0], e))
        return out
    stdout, stderr = Capture(child.stdout, cap, keep="head"), Capture(child.stderr, 65536, "tail")
    try:
        result["returncode"] = child.wait(timeout=float(spec.get("timeout", 900)))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        out["errors"].append("manage.py did not finish within %s s" % spec.get("timeout", 900))
    for name, capture in (("stdout", stdout), ("stderr", stderr)):
        capture.thread.join(30)  # a grandchild still holding the pipe must not hang us
        result[name] = capture.text()
        result[name + "_bytes"] = capture.total
        result[name + "_truncated"] = capture.total > len(capture.data)
    return out


class Capture:
    """Read a pipe to its end in a thread, keeping its first (head) or last (tail) cap bytes."""

    def __init__(self, pipe, cap, keep):
        self.pipe, self.cap, self.keep = pipe, cap, keep
        self.data, self.total = b"", 0
        self.thread = threading.Thread(target=self.run)
        self.thread.daemon = True
        self.thread.start()

    def run(self):
        while True:
            chunk = self.pipe.read(65536)
            if not chunk:
                break
            self.total += len(chunk)
            if self.keep == "head":
                if len(self.data) < self.cap:
                    self.data += chunk[: self.cap - len(self.data)]
            else:
                self.data = (self.data + chunk)[-self.cap:]
        self.pipe.close()

    def text(self):
        return self.data.decode("utf-8", "replace")


def process_environment(pid):
    with open("/proc/%d/environ" % pid, "rb") as fh:
        raw = fh.read()
    return dict(
        (k.decode(errors="replace"), v.decode(errors="replace"))
        for k, v in (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    )


def make_dir_for(path, entry, out):
    """Create `path` (its parent must exist) for the app user: made by root, then given to
    the user, mode 0700. An existing directory is left as it is; a symlink is refused."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        out["errors"].append("refusing to create %r: not a plain absolute path" % path)
        return
    if os.path.islink(path):
        out["errors"].append("refusing to use %s: it is a symlink" % path)
        return
    if os.path.isdir(path):
        return
    try:
        os.mkdir(path, 0o700)
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    except OSError as e:
        out["errors"].append("cannot create %s: %s" % (path, e))


def device(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))


def filesystem(dest, facts):
    out = {"root_device": device("/"), "destination_exists": os.path.isdir(dest)}
    out["destination_device"] = device(dest)
    out["destination_is_mountpoint"] = os.path.ismount(dest)
    mount = covering_mount(dest, facts)
    out["mount"] = mount
    try:
        vfs = os.statvfs(dest)
        out["bytes_total"] = vfs.f_blocks * vfs.f_frsize
        out["bytes_free"] = vfs.f_bavail * vfs.f_frsize
        out["inodes_total"] = vfs.f_files
        out["inodes_free"] = vfs.f_favail
    except OSError as e:
        facts["errors"].append("statvfs %s: %s" % (dest, e))
    return out


def covering_mount(path, facts):
    """The /proc/self/mountinfo entry whose mount point is the longest prefix of path."""
    real = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                f, r = left.split(), right.split()
                point = f[4].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and (best is None or len(point) >= len(best["mount_point"])):
                    best = {
                        "mount_point": point,
                        "root": f[3],
                        "device": f[2],
                        "options": f[5].split(","),
                        "fstype": r[0] if r else "",
                        "source": r[1] if len(r) > 1 else "",
                        "super_options": r[2].split(",") if len(r) > 2 else [],
                    }
    except OSError as e:
        facts["errors"].append("mountinfo: %s" % e)
    return best


def app_processes(app_user, group):
    """Processes of the app: of app_user if given, else non-root ones with a Fly/Django env."""
    found = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            st = os.stat("/proc/" + pid)
            with open("/proc/%s/environ" % pid, "rb") as fh:
                raw = fh.read()
            cmd = open("/proc/%s/cmdline" % pid, "rb").read().replace(b"\0", b" ").strip()
            cwd = os.readlink("/proc/%s/cwd" % pid)
        except (OSError, ValueError):
            continue
        try:
            user = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            user = str(st.st_uid)
        env = dict(
            item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item
        )
        env = dict((k.decode(errors="replace"), v.decode(errors="replace")) for k, v in env.items())
        if app_user:
            if user != app_user:
                continue
        elif st.st_uid == 0 or not (
            "MEDIA_ROOT" in env or "FLY_PROCESS_GROUP" in env or "DJANGO_SETTINGS_MODULE" in env
        ):
            continue
        if group and env.get("FLY_PROCESS_GROUP") not in (None, group):
            continue
        media_root = env.get("MEDIA_ROOT")
        if media_root and not media_root.startswith("/"):
            media_root = os.path.normpath(os.path.join(cwd, media_root))
        found.append({
            "pid": int(pid), "user": user, "uid": st.st_uid, "cwd": cwd,
            "command": cmd.decode(errors="replace")[:200],
            "media_root": media_root, "group": env.get("FLY_PROCESS_GROUP"),
        })
    return found


def ask_django(manage_py, proc, user, facts):
    """settings.MEDIA_ROOT as Django computes it, in the app's own environment, as its user."""
    code = "from django.conf import settings; print('__MEDIA_ROOT=' + str(settings.MEDIA_ROOT))"
    try:
        with open("/proc/%d/environ" % proc["pid"], "rb") as fh:
            raw = fh.read()
        env = dict(
            (k.decode(errors="replace"), v.decode(errors="replace"))
            for k, v in (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        )
        entry = pwd.getpwnam(user)

        def become():
            os.initgroups(user, entry.pw_gid)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

        done = subprocess.run(
            shlex.split(manage_py) + ["shell", "-c", code],
            cwd=proc["cwd"], env=env, preexec_fn=become, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
        )
    except (OSError, KeyError, ValueError, subprocess.SubprocessError) as e:
        facts["errors"].append("manage.py: %s" % e)
        return None
    for line in done.stdout.decode(errors="replace").splitlines():
        if line.startswith("__MEDIA_ROOT="):
            value = line[len("__MEDIA_ROOT="):]
            if value and not value.startswith("/"):
                value = os.path.normpath(os.path.join(proc["cwd"], value))
            return value or None
    tail = done.stderr.decode(errors="replace").strip().splitlines()
    facts["errors"].append("manage.py: %s" % (tail[-1] if tail else "exit %d" % done.returncode))
    return None


def ownership(path):
    try:
        st = os.stat(path)
    except OSError as e:
        return {"media_root_exists": False, "media_root_error": str(e)}
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return {
        "media_root_exists": stat.S_ISDIR(st.st_mode),
        "media_root_owner": owner,
        "media_root_uid": st.st_uid,
        "media_root_gid": st.st_gid,
        "media_root_mode": "%04o" % stat.S_IMODE(st.st_mode),
    }


def as_user(user, fn):
    """Run fn() in a child that has become `user` (not root); return (ok, detail)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False, "no such user %s" % user
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        ok, detail = False, ""
        try:
            os.initgroups(user, entry.pw_gid)  # the app user's own supplementary groups
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            detail = fn() or ""
            ok = True
        except BaseException as e:  # the child must report, never raise past here
            detail = "%s: %s" % (type(e).__name__, e)
        os.write(write, json.dumps([ok, detail]).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while True:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    try:
        ok, detail = json.loads(data.decode())
    except ValueError:
        return False, "the probe child died"
    return ok, detail


def write_as(user, directory, run_id):
    """Create, write, fsync, read back and remove a unique file as `user`."""
    name = "%s%s-w-%d" % (PREFIX, run_id, os.getpid())
    path = os.path.join(directory, name)
    payload = ("volguard write test %s\n" % run_id).encode()

    def attempt():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                back = os.read(fd, len(payload) + 1)
            finally:
                os.close(fd)
            if back != payload:
                raise OSError("read back %d bytes that differ from what was written" % len(back))
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    ok, detail = as_user(user, attempt)
    return {"ok": ok, "user": user, "error": None if ok else detail}


def write_visibility_probe(user, media_root, args, facts):
    name = "%s%s-v-%s" % (PREFIX, args["run_id"], args["machine"])
    path = os.path.join(media_root, name)
    token = args["run_id"]

    def attempt():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, token.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    ok, detail = as_user(user, attempt)
    if not ok:
        facts["errors"].append("visibility probe: %s" % detail)
        return None
    watchdog(path, token, float(args.get("ttl", 300)))
    return name


def watchdog(path, token, ttl):
    """A detached process that removes the probe after ttl seconds if it is still ours."""
    child = os.fork()
    if child != 0:
        os.waitpid(child, 0)
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    for fd in (0, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    time.sleep(ttl)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            mine = os.read(fd, 256).decode(errors="replace") == token
        finally:
            os.close(fd)
        if mine:
            os.unlink(path)
    except OSError:
        pass
    os._exit(0)


def remove_probe(media_root, name, facts):
    if not media_root or not name.startswith(PREFIX) or "/" in name:
        return
    try:
        os.unlink(os.path.join(media_root, name))
    except FileNotFoundError:
        pass
    except OSError as e:
        facts["errors"].append("remove %s: %s" % (name, e))


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    arguments = json.loads(base64.b64decode(sys.argv[-1]).decode())
    try:
        result = main(arguments)
    except Exception as e:  # report, so the caller can tell a broken probe from a broken host
        result = {"errors": ["probe failed: %s: %s" % (type(e).__name__, e)], "fatal": True}
    sys.stdout.write("\n%s\n%s\n%s\n" % (BEGIN, json.dumps(result), END))
    sys.stdout.flush()
'''
