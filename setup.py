from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open("relay/__init__.py", encoding="utf-8") as handle:
        exec(handle.read(), namespace)
    return namespace["__version__"]


setup(
    name="oauth-relay",
    version=read_version(),
    description="SMTP, POP3 and IMAP relay that turns local passwords into Office 365 XOAUTH2 logins",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["relay", "relay.*"]),
    include_package_data=True,
    package_data={"relay": ["defaults/*.yaml"]},
    install_requires=[
        "gevent>=22.10",
        "msal>=1.23",
        "PyYAML>=5.4",
        "watchdog>=2.1",
        "structlog>=21.5",
        "cryptography>=36",
        "requests>=2.25",
        # Round-trip YAML editing: `user add` must keep the admin's comments and layout.
        "ruamel.yaml>=0.17.21",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "pytest-timeout>=2.1",
            "trustme>=1.0",
            "getmail6>=6.18",  # a real legacy POP3 collector for the end-to-end tests
        ],
    },
    entry_points={"console_scripts": ["oauth-relay = relay.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Communications :: Email",
    ],
)
