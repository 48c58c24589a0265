#include <coropipe/channel.hpp>

#include <doctest/doctest.h>

#include "support.hpp"
