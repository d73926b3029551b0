// mongotune's application user: readWrite on one database and nothing else.
//
// The official mongo image runs this file from /docker-entrypoint-initdb.d the first time it starts
// on an empty data volume (Kubernetes: the mongotune-mongo-init ConfigMap; compose: a bind mount).
// It is safe to run again by hand, e.g. on a volume created before it existed or to change the
// password, inside the mongo container:
//     mongosh --quiet /docker-entrypoint-initdb.d/10-mongotune-app-user.js
// It signs in as root from the container's own environment, so no password is on a command line.
//
// Environment: MONGO_APP_PASSWORD (or MONGO_APP_PASSWORD_FILE), required;
//              MONGO_APP_USER (default "mongotune"), MONGO_APP_DATABASE (default "mongotune");
//              MONGO_INITDB_ROOT_USERNAME and MONGO_INITDB_ROOT_PASSWORD(_FILE), used when run by hand.

function fromEnv(name, fallback) {
  const file = process.env[name + "_FILE"];
  if (file) {
    return fs.readFileSync(file, "utf8").replace(/\r?\n$/, "");
  }
  return process.env[name] || fallback;
}

const appDb = fromEnv("MONGO_APP_DATABASE", "mongotune");
const appUser = fromEnv("MONGO_APP_USER", "mongotune");
const appPassword = fromEnv("MONGO_APP_PASSWORD", "");
if (!appPassword) {
  throw new Error("MONGO_APP_PASSWORD is empty: set it (or MONGO_APP_PASSWORD_FILE) for mongotune's application user");
}

// During initdb the image has already signed this shell in (or runs mongod without access control);
// by hand we are anonymous and sign in as root ourselves.
const status = db.adminCommand({ connectionStatus: 1 });
const rootUser = process.env.MONGO_INITDB_ROOT_USERNAME;
if (status.authInfo.authenticatedUsers.length === 0 && rootUser) {
  db.getSiblingDB("admin").auth(rootUser, fromEnv("MONGO_INITDB_ROOT_PASSWORD", ""));
}

const target = db.getSiblingDB(appDb);
const roles = [{ role: "readWrite", db: appDb }];
if (target.getUser(appUser)) {
  target.updateUser(appUser, { pwd: appPassword, roles: roles });
  print(`mongotune: updated user ${appUser}@${appDb} (readWrite on ${appDb} only)`);
} else {
  target.createUser({ user: appUser, pwd: appPassword, roles: roles });
  print(`mongotune: created user ${appUser}@${appDb} (readWrite on ${appDb} only)`);
}
