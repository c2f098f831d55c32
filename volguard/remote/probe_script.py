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

Three modes serve `volguard recover`, each given stored file names relative to the
app's MEDIA_ROOT (from its process environment), each name resolved one component at a
time with O_NOFOLLOW from a descriptor of the root (`..`, absolute names and symlinks are
refused, never followed):
- `{"locate": {...}}`, read-only: size, sha256, mtime and mode of each name;
- `{"send": {...}}`, read-only: the files as frames on stdout (a JSON header line, the
  bytes, a JSON trailer with their sha256), a chunk at a time;
- `{"receive": {...}}`: frames from stdin, each written as the app user (with the app
  process's umask) to a temporary name created O_EXCL, fsynced, its sha256 read back,
  then linked to its final name (which fails if the name exists: nothing is replaced)
  and logged once to the change log; one result line per file on stdout. With
  ``check_first``, a list of the files to come arrives first, and those already in place are
  answered before any frame, so that the sender sends only the rest.
"""

PROBE_SOURCE = r'''
import base64, errno, hashlib, json, os, pwd, shlex, signal, stat, subprocess, sys, threading, time

BEGIN, END = "__VOLGUARD_FACTS_BEGIN__", "__VOLGUARD_FACTS_END__"
PREFIX = ".volguard-probe-"


def main(args):
    if args.get("manage"):
        return manage(args["manage"])
    if args.get("locate"):
        return locate(args["locate"])
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
    # what `fly storage create` put in the app's environment: evidence only (a bucket can be
    # provisioned while Django still stores media on the volume); Django's answer decides
    facts["object_storage_env"] = procs[0].get("object_storage_env", {}) if procs else {}
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
        if not make_dir_for(path, entry, out):
            return out  # a refusal stops the step: the command never runs
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
    the user, mode 0700; an existing directory is left as it is. True when `path` is ready.

    Root never goes through a link: the path is walked from / one component at a time,
    each opened relative to its parent's descriptor with O_NOFOLLOW|O_DIRECTORY, and the
    last one made with mkdir relative to its parent's descriptor. A symlink (or anything but
    a directory) anywhere on the way is a refusal, and the caller stops there: nothing is
    created inside it, by root or by the app user."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        out["errors"].append("refusing to create %r: not a plain absolute path" % path)
        return False
    parts = [p for p in path.split("/") if p]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            here = "/" + "/".join(parts[: i + 1])
            try:
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if i < len(parts) - 1:
                        raise
                    os.mkdir(part, 0o700, dir_fd=fd)
                    child = os.open(part, flags, dir_fd=fd)
                    os.fchown(child, entry.pw_uid, entry.pw_gid)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    out["errors"].append(
                        "refusing to use %s: %s is a symlink or not a directory" % (path, here)
                    )
                else:
                    out["errors"].append("cannot create %s: %s" % (path, e))
                return False
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return True


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
            # names `fly storage create` sets; never the keys, which are secrets
            "object_storage_env": dict(
                (k, env[k][:200]) for k in OBJECT_STORAGE_ENV if env.get(k)
            ),
        })
    return found


OBJECT_STORAGE_ENV = ("BUCKET_NAME", "AWS_ENDPOINT_URL_S3")

#: MEDIA_ROOT, then where the default storage writes: its class, and for volguard's
#: FallbackStorage (reads primary then fallback, writes primary) its primary's class.
DJANGO_FACTS = """
import json
from django.conf import settings
print('__MEDIA_ROOT=' + str(settings.MEDIA_ROOT))
try:
    from django.core.files.storage import FileSystemStorage, default_storage as s
    name = lambda c: c.__module__ + '.' + c.__qualname__
    w = s.primary if hasattr(s, 'primary_alias') else s
    print('__STORAGE=' + json.dumps({
        'backend': name(s.__class__), 'writes_to': name(w.__class__),
        'filesystem': isinstance(w, FileSystemStorage),
        'fallback': name(s.fallback.__class__) if w is not s else None}))
except Exception as e:
    print('__STORAGE_ERROR=' + ' '.join(('%s: %s' % (type(e).__name__, e)).split())[:300])
"""


def ask_django(manage_py, proc, user, facts):
    """settings.MEDIA_ROOT as Django computes it, in the app's own environment, as its user;
    and (facts["media_storage"]) where its default storage writes."""
    code = DJANGO_FACTS
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
    lines = done.stdout.decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("__STORAGE="):
            try:
                facts["media_storage"] = json.loads(line[len("__STORAGE="):])
            except ValueError:
                facts["errors"].append("manage.py: the storage answer is not JSON")
        elif line.startswith("__STORAGE_ERROR="):
            facts["errors"].append("manage.py: default storage: " + line[len("__STORAGE_ERROR="):])
    for line in lines:
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


# -- recover's modes (`volguard recover`): locate, send, receive ------------------------------
# Every name is a stored file name relative to MEDIA_ROOT. It is resolved one component at a
# time from a descriptor of MEDIA_ROOT with O_NOFOLLOW, so `..`, an absolute name, or a
# symlink anywhere on the way (even one pointing inside the root) is refused, never followed.

STREAM_BEGIN = b"__VOLGUARD_STREAM_BEGIN__"
RESULT = "__VOLGUARD_RESULT__ "
TEMP_PREFIX = ".volguard-recover-"
CHUNK = 1 << 16
MAX_NAMES = 1 << 28  # bytes of the names list on stdin (millions of names)
FLUSH_EVERY = 0.2  # seconds a receive result line may wait in the buffer, at most
LARGE_FRAME = 1 << 20  # a file this large takes a while to arrive: report the others first


class Refused(Exception):
    """A name volguard will not resolve: not plain, or a link or non-directory on the way."""


def split_name(name):
    if not isinstance(name, str) or not name or "\0" in name or name.startswith("/"):
        raise Refused("not a plain relative name")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Refused("not a plain relative name (empty, '.' or '..' component)")
    if parts[0] == ".volguard" or parts[-1].startswith(TEMP_PREFIX):
        raise Refused("a name in volguard's own space")
    return parts


def open_dir(root_fd, parts, create=False):
    """A descriptor of the directory holding parts[-1], walked without following links;
    with create, missing directories are made (mode 0777 less the umask, as the app would)."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                    os.fsync(fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused("%s: a symlink or not a directory on the way" % part)
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(root_fd, name):
    """(fd, stat) of the regular file `name` under the root, or Refused / FileNotFoundError."""
    parts = split_name(name)
    dfd = open_dir(root_fd, parts)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused("a symlink, not a file")
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Refused("not a regular file")
    return fd, st


def digest_fd(fd):
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return h.hexdigest(), offset
        h.update(chunk)
        offset += len(chunk)


def recover_root(spec, out):
    """MEDIA_ROOT as the app process on this Machine sees it (its environment), else the
    configured one; None with an error when neither is known."""
    procs = app_processes(spec.get("app_user"), spec.get("group"))
    root = procs[0].get("media_root") if procs else None
    root = root or spec.get("media_root")
    if not root:
        out["errors"].append("no app process with MEDIA_ROOT in its environment on this Machine")
    return root, procs


def locate(spec):
    """Read-only: for each name, the file under MEDIA_ROOT: size, sha256, mtime, mode."""
    out = {"errors": []}
    names = spec_names(spec, out)
    root, _ = recover_root(spec, out)
    if not root:
        return out
    out["media_root"] = root
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        out["errors"].append("MEDIA_ROOT %s: %s" % (root, e))
        return out
    files = {}
    try:
        for name in names:
            try:
                fd, st = open_file(root_fd, name)
            except Refused as e:
                files[name] = {"status": "refused", "why": str(e)}
                continue
            except FileNotFoundError:
                files[name] = {"status": "absent"}
                continue
            except OSError as e:
                files[name] = {"status": "error", "why": str(e)}
                continue
            try:
                sha, size = digest_fd(fd)
            finally:
                os.close(fd)
            files[name] = {
                "status": "found", "size": size, "sha256": sha, "mtime": st.st_mtime,
                "mode": "%04o" % stat.S_IMODE(st.st_mode),
            }
    finally:
        os.close(root_fd)
    out["files"] = files
    return out


def spec_names(spec, out):
    """The names, from the spec or, with names_on_stdin, as one JSON list on stdin: a
    command line holds at most 128 KiB (Linux's MAX_ARG_STRLEN), about 1,500 names."""
    if not spec.get("names_on_stdin"):
        return spec.get("names") or []
    line = sys.stdin.buffer.readline(MAX_NAMES)
    try:
        names = json.loads(line.decode("utf-8")) if line.endswith(b"\n") else None
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        out["errors"].append("no list of names on stdin")
        return []
    return names


def line_out(stream, obj):
    stream.write(json.dumps(obj, sort_keys=True).encode() + b"\n")


def send(spec):
    """Write each file as a frame on stdout: a JSON header line, exactly `size` bytes, a JSON
    trailer line with the sha256 of what was sent. Read-only; memory bounded by one chunk."""
    stdout = sys.stdout.buffer
    out = {"errors": []}
    names = spec_names(spec, out)  # stdin read to its end before the first frame
    stdout.write(STREAM_BEGIN + b"\n")
    root, _ = recover_root(spec, out)
    root_fd = None
    if root:
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            out["errors"].append("MEDIA_ROOT %s: %s" % (root, e))
    for name in names if root_fd is not None else []:
        try:
            fd, st = open_file(root_fd, name)
        except (Refused, OSError) as e:
            line_out(stdout, {"name": name, "error": str(e) or type(e).__name__})
            continue
        try:
            size = st.st_size
            line_out(stdout, {"name": name, "size": size, "mtime": st.st_mtime,
                              "mode": "%04o" % stat.S_IMODE(st.st_mode)})
            h, offset = hashlib.sha256(), 0
            while offset < size:
                chunk = os.pread(fd, min(CHUNK, size - offset), offset)
                if not chunk:  # the file shrank: pad, and the trailer says so
                    chunk = b"\0" * min(CHUNK, size - offset)
                    h.update(b"short")
                h.update(chunk)
                stdout.write(chunk)
                offset += len(chunk)
            line_out(stdout, {"sha256": h.hexdigest()})
        finally:
            os.close(fd)
    line_out(stdout, {"end": True, "errors": out["errors"]})
    stdout.flush()
    return 0


def app_umask(pid):
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


class LogSeen:
    """The restore_file entries already in the change log: (name, sha256) pairs."""

    def __init__(self, path):
        self.path, self.seen = path, set()
        try:
            with open(path, "rb") as fh:
                for raw in fh:
                    try:
                        entry = json.loads(raw.decode("utf-8"))
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and entry.get("action") == "restore_file":
                        after = entry.get("after") or {}
                        if isinstance(after, dict):
                            self.seen.add((entry.get("target"), after.get("sha256")))
        except OSError:
            pass

    def log(self, name, sha, more, run_id, user):
        if (name, sha) in self.seen:
            return False
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "user": user, "host": os.uname()[1], "command": "recover", "action": "restore_file",
            "target": name, "before": None, "after": dict(more, sha256=sha), "run": run_id,
        }
        data = json.dumps(entry, sort_keys=True).encode() + b"\n"
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line stays alone
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.seen.add((name, sha))
        return True


def receive(spec):
    """Read frames from stdin and restore each file under MEDIA_ROOT as the app user: a temp
    name created O_EXCL, fsync, sha256 read back, link to the final name (never replacing),
    one change-log line, unlink the temp. One result line per file on stdout."""
    stdout, stdin = sys.stdout.buffer, sys.stdin.buffer

    import select

    flushed = [time.monotonic()]

    def result(obj, now=True):
        stdout.write((RESULT + json.dumps(obj, sort_keys=True) + "\n").encode())
        if now:
            stdout.flush()
            flushed[0] = time.monotonic()

    def flush_before_waiting(size=0):
        # a result line per file, flushed one by one, costs a write and an ssh packet per
        # file at every hop; flush when the next read may wait (no input ready, a large
        # file next) or every FLUSH_EVERY seconds, so the caller hears of each file promptly
        if (size > LARGE_FRAME or time.monotonic() - flushed[0] >= FLUSH_EVERY
                or not select.select([stdin], [], [], 0)[0]):
            stdout.flush()
            flushed[0] = time.monotonic()

    out = {"errors": []}
    root, procs = recover_root(spec, out)
    if not root or not procs:
        if not procs and not out["errors"]:
            out["errors"].append("no app process found on this Machine")
        result({"ready": False, "errors": out["errors"]})
        return 1
    user = spec.get("app_user") or procs[0]["user"]
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        result({"ready": False, "errors": ["no such user %s" % user]})
        return 1
    for path in spec.get("make_dirs") or []:
        if not make_dir_for(path, entry, out):
            result({"ready": False, "errors": out["errors"]})
            return 1
    umask = app_umask(procs[0]["pid"])
    if os.getuid() == 0:
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    os.umask(umask)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        result({"ready": False, "errors": out["errors"] + ["MEDIA_ROOT %s: %s" % (root, e)]})
        return 1
    run_id = str(spec.get("run_id") or "run")
    stale = tuple(TEMP_PREFIX + str(r) + "-" for r in spec.get("stale_runs") or [])
    log = LogSeen(spec["audit_log"]) if spec.get("audit_log") else None
    result({"ready": True, "media_root": root, "user": user, "uid": entry.pw_uid,
            "umask": "%04o" % umask, "errors": out["errors"]})
    if spec.get("check_first") and not check_in_place(root_fd, stdin, log, run_id, user, result):
        result({"end": False, "errors": ["no list of files to check on stdin"]})
        return 1
    cleaned, n = set(), 0
    while True:
        flush_before_waiting()
        header = stdin.readline(1 << 20)
        if not header.endswith(b"\n"):
            result({"end": False, "errors": ["the stream ended before its end frame"]})
            return 1
        frame = json.loads(header.decode("utf-8"))
        if frame.get("end"):
            result({"end": True})
            return 0
        n += 1
        name, size, want = frame["name"], int(frame["size"]), frame["sha256"]
        mode = int(frame.get("mode") or "0644", 8) & 0o777
        flush_before_waiting(size)
        status = restore_one(root_fd, name, size, want, mode, stdin, run_id, n, stale, cleaned)
        if status.get("status") == "truncated":
            result(dict(status, name=name))
            return 1
        if log and status["status"] in ("restored", "present_identical"):
            more = {"size": size, "source": frame.get("source"), "mode": "%04o" % mode}
            try:
                status["logged"] = log.log(name, want, more, run_id, user)
            except OSError as e:
                status["log_error"] = str(e)
        result(dict(status, name=name), now=False)


def check_in_place(root_fd, stdin, log, run_id, user, result):
    """Before any frame: one JSON line on stdin listing the files to come ({name, sha256,
    size, source}); each already under its final name is answered now, so that the sender
    sends only the rest: ``present_identical`` (logged once, as when its frame arrives) or
    ``target_exists`` (other bytes: reported, never replaced), ``refused`` for a name that
    cannot be resolved. Absent names get no line. Ends with a ``checked`` line."""
    line = stdin.readline(MAX_NAMES)
    try:
        wanted = json.loads(line.decode("utf-8")) if line.endswith(b"\n") else None
    except ValueError:
        wanted = None
    if not isinstance(wanted, list) or not all(isinstance(w, dict) for w in wanted):
        return False
    answered = 0
    for want in wanted:
        name, sha = want.get("name"), want.get("sha256")
        try:
            parts = split_name(name)
            dfd = open_dir(root_fd, parts)
        except Refused as e:
            result({"name": name, "status": "refused", "why": str(e)}, now=False)
            answered += 1
            continue
        except OSError:  # absent (or unreadable): its frame comes, and says
            continue
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            same = False
            if stat.S_ISREG(st.st_mode):
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    same = digest_fd(fd)[0] == sha
                finally:
                    os.close(fd)
        except OSError:
            continue
        finally:
            os.close(dfd)
        status = {"name": name, "status": "present_identical" if same else "target_exists"}
        if same and log:
            more = {"size": st.st_size, "source": want.get("source"),
                    "mode": "%04o" % stat.S_IMODE(st.st_mode)}
            try:
                status["logged"] = log.log(name, sha, more, run_id, user)
            except OSError as e:
                status["log_error"] = str(e)
        result(status, now=False)
        answered += 1
    result({"checked": len(wanted), "in_place": answered})
    return True


def drain(stdin, size):
    left = size
    while left:
        chunk = stdin.read(min(CHUNK, left))
        if not chunk:
            return False
        left -= len(chunk)
    return True


def restore_one(root_fd, name, size, want, mode, stdin, run_id, n, stale, cleaned):
    try:
        parts = split_name(name)
        dfd = open_dir(root_fd, parts, create=True)
    except (Refused, OSError) as e:
        if not drain(stdin, size):
            return {"status": "truncated"}
        return {"status": "refused", "why": str(e) or type(e).__name__}
    temp = None
    try:
        key = os.fstat(dfd)[:2]
        if stale and key not in cleaned:  # temp files of earlier runs of this recovery
            for entry in os.listdir(dfd):
                if entry.startswith(stale):
                    try:
                        os.unlink(entry, dir_fd=dfd)
                    except OSError:
                        pass
            cleaned.add(key)
        final = parts[-1]
        try:
            st = os.stat(final, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not drain(stdin, size):
                return {"status": "truncated"}
            same = False
            if stat.S_ISREG(st.st_mode):
                fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    same = digest_fd(fd)[0] == want
                finally:
                    os.close(fd)
            return {"status": "present_identical" if same else "target_exists"}
        temp = "%s%s-%d" % (TEMP_PREFIX, run_id, n)
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dfd)
        try:
            left = size
            while left:
                chunk = stdin.read(min(CHUNK, left))
                if not chunk:
                    return {"status": "truncated"}
                os.write(fd, chunk)
                left -= len(chunk)
            os.fchmod(fd, mode)
            os.fsync(fd)
            got, length = digest_fd(fd)
        finally:
            os.close(fd)
        if got != want or length != size:
            return {"status": "mismatch", "sha256": got}
        try:
            os.link(temp, final, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            return {"status": "target_exists"}
        os.fsync(dfd)
        st = os.stat(final, dir_fd=dfd, follow_symlinks=False)
        return {"status": "restored", "sha256": got, "size": length,
                "mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    except OSError as e:
        return {"status": "failed", "why": str(e)}
    finally:
        if temp is not None:
            try:
                os.unlink(temp, dir_fd=dfd)  # ours, made in this run: never anything else
                os.fsync(dfd)
            except OSError:
                pass
        os.close(dfd)


def stream_main(arguments):
    """The streaming modes print their own framed output; the exit status says how they ended."""
    if arguments.get("send"):
        return send(arguments["send"])
    return receive(arguments["receive"])


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    arguments = json.loads(base64.b64decode(sys.argv[-1]).decode())
    if arguments.get("send") or arguments.get("receive"):
        sys.exit(stream_main(arguments))
    try:
        result = main(arguments)
    except Exception as e:  # report, so the caller can tell a broken probe from a broken host
        result = {"errors": ["probe failed: %s: %s" % (type(e).__name__, e)], "fatal": True}
    sys.stdout.write("\n%s\n%s\n%s\n" % (BEGIN, json.dumps(result), END))
    sys.stdout.flush()
'''
